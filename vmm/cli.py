"""The command line: one small function per command. Parse, call one core function, render.

Errors: core raises ``VmmError`` subclasses; :func:`main` catches them once and prints one
``error:`` line with the contract's exit code. Typer's own usage errors become the same kind
of line with exit 2. ``VMM_DEBUG=1`` shows the traceback of unexpected errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vmm import __version__
from vmm.core import settings
from vmm.core.errors import Interrupted, VmmError

app = typer.Typer(
    name="vmm",
    help="The model manager for vLLM hosts: pull, inspect, check and serve Hugging Face models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Models root (default: $VMM_ROOT, else /models).",
                 show_default=False, metavar="PATH"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
NameArg = Annotated[str, typer.Argument(help="Model: Hub id (org/name) or directory name (org--name).",
                                        metavar="NAME", show_default=False)]

_global_root: Path | None = None


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"vmm {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    root: RootOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    global _global_root
    _global_root = root


def root_of(root: Path | None) -> Path:
    """The models root: the command's --root, else the global one, else env/default."""
    return settings.models_root(root or _global_root)


# ------------------------------------------------------------------ ls / inspect / shards / rm


# ------------------------------------------------------------------ pull


# ------------------------------------------------------------------ template / check


# ------------------------------------------------------------------ serve


# ------------------------------------------------------------------ storage: dedup / gc / pin / import


# ------------------------------------------------------------------ runtime: ps / stop / logs


@app.command("ps")
def ps_cmd(
    root: RootOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.0, max=60.0,
                                            help="Seconds between the two /metrics samples that give tokens/s (0: no rates).")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """List the vLLM servers vmm started on this host, with live figures from /metrics."""
    from vmm import render
    from vmm.core import runtime

    statuses = runtime.ps(root_of(root), interval_s=interval)
    if json_out:
        render.emit_json({"servers": statuses})
        return
    render.servers_table(statuses)


@app.command("stop")
def stop_cmd(
    target: Annotated[Optional[str], typer.Argument(help="Model name or port of a server vmm started.",
                                                    metavar="NAME|PORT", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every server vmm started on this host.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.0,
                                           help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop servers gracefully (SIGTERM, then SIGKILL after --timeout)."""
    from vmm import render
    from vmm.core import runtime

    results = runtime.stop(root_of(root), target, all_, timeout)
    if json_out:
        render.emit_json({"stopped": results})
    else:
        for r in results:
            state = "stopped" if r.stopped else "still running"
            render.note(f"{r.model} (pid {r.pid}, port {r.port}): {state} after {r.signal}, {r.waited_s:.1f}s")
    if any(not r.stopped for r in results):
        from vmm.core.errors import BusyError

        raise BusyError("server did not stop", ", ".join(r.id for r in results if not r.stopped),
                        "check permissions; `kill -9` the pid shown by `vmm ps`")


@app.command("logs")
def logs_cmd(
    target: Annotated[str, typer.Argument(help="Model name or port of a detached server.",
                                          metavar="NAME|PORT", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many last lines to print first.")] = 100,
    root: RootOpt = None,
) -> None:
    """Print the log of a server started with `vmm serve --detach`."""
    import time

    from vmm.core import runtime

    path = runtime.log_path_for(root_of(root), target)
    try:
        for line in runtime.tail_lines(path, lines):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if not follow:
            return
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            while True:
                chunk = handle.readline()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except FileNotFoundError:
        from vmm.core.errors import NotFoundError

        raise NotFoundError("log file is gone", str(path), "the server's state dir was cleaned") from None



# ------------------------------------------------------------------ entry point

def _usage_line(exc: Exception) -> str:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "vmm"
    message = " ".join(message.split())
    return f"error: bad usage: {message} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, map every failure to one line and a code."""
    from typer.exceptions import TyperException

    global _global_root
    _global_root = None
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = app(args=args, prog_name="vmm", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except VmmError as exc:
        if settings.debug():
            import traceback

            traceback.print_exc()
        sys.stderr.write(exc.line() + "\n")
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write(Interrupted("interrupted", "", "run the same command again to resume").line() + "\n")
        code = Interrupted.exit_code
    except TyperException as exc:
        sys.stderr.write(_usage_line(exc) + "\n")
        code = getattr(exc, "exit_code", 2) or 2
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 1
        if settings.debug():
            raise
        sys.stderr.write(
            f"error: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(this is a bug in vmm; rerun with VMM_DEBUG=1 and report the traceback)\n"
        )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
