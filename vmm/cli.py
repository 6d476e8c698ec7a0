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

def _parse_size(text: str, option: str) -> int:
    """'16MiB', '8M', '1048576' -> bytes (binary multiples); exit 2 on anything else."""
    import re

    from vmm.core.errors import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*", text, re.I)
    if not match:
        raise UsageError(f"malformed size for {option}", repr(text), "use e.g. 16MiB or 8388608")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


@app.command()
def pull(
    name: NameArg,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit sha (same as NAME@REV).",
                                                    metavar="REV", show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    all_files: Annotated[bool, typer.Option("--all-files", help="Also fetch duplicate weight formats "
                                            "(pytorch_model*.bin, consolidated*, original/) and every GGUF.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="No network: succeed only if the model is complete "
                                          "(also HF_HUB_OFFLINE=1).")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Exit 8 instead of waiting when another vmm holds the model.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Parallel connections.", metavar="N")] = 8,
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Bytes per Range request (e.g. 16MiB).",
                                            metavar="SIZE")] = "16MiB",
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a model from the Hub into the models root: parallel, resumable, verified."""
    import signal

    from vmm import render
    from vmm.core import download
    from vmm.render_pull import PullProgress

    size = _parse_size(chunk_size, "--chunk-size")

    def _term(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread (embedding)
        previous = None
    try:
        with PullProgress(name) as progress:
            result = download.download_model_to_path(
                name, root=root_of(root), include=include, exclude=exclude, revision=revision,
                all_files=all_files, offline=True if offline else None, wait=not no_wait,
                workers=workers, chunk_size=size, progress=progress)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # >>> integration hook (lead): chat template setup after a successful pull, e.g.
    # from vmm.core import templates; templates.setup_chat_template(Path(result.path), result.name)
    # <<< integration hook
    if json_out:
        render.emit_json({"name": result.name, "path": result.path, "revision": result.revision,
                          "files": result.files, "bytes_downloaded": result.bytes_downloaded,
                          "bytes_total": result.bytes_total, "verified": result.verified,
                          "kept_files": result.kept_files, "quant": result.quant,
                          "previous_revision": result.previous_revision})
        return
    what = "up to date" if not result.bytes_downloaded and not result.fetched_files else "pulled"
    render.key_values([("model", result.name), ("status", what), ("path", result.path),
                       ("revision", result.revision), ("files", result.files),
                       ("size", render.human_bytes(result.bytes_total)),
                       ("downloaded", render.human_bytes(result.bytes_downloaded)),
                       ("verified", "yes" if result.verified else "no")])



# ------------------------------------------------------------------ template / check


# ------------------------------------------------------------------ serve


# ------------------------------------------------------------------ storage: dedup / gc / pin / import


# ------------------------------------------------------------------ runtime: ps / stop / logs


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
