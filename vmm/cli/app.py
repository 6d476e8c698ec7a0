"""The Typer app, the options every command shares, and the one place errors become exit codes.

Errors: core raises ``VmmError`` subclasses; :func:`main` catches them once and prints one
``error:`` line with the contract's exit code. Typer's own usage errors become the same kind
of line with exit 2. ``VMM_DEBUG=1`` shows the traceback of unexpected errors.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from vmm import DISTRIBUTION, __version__, _typer_fast, render
from vmm.core import settings
from vmm.core.errors import Interrupted, VmmError

_typer_fast.install()

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
        render.result(f"vmm {__version__} ({DISTRIBUTION})")
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


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def refuse_without_terminal(yes: bool, action: str, subject: str, hint: str) -> None:
    """Without --yes, a command that deletes needs a terminal to ask on: else exit 2."""
    from vmm.core.errors import UsageError

    if not yes and not stdin_is_terminal():
        raise UsageError(f"refusing to {action} without confirmation", subject,
                         f"stdin is not a terminal: {hint}")


def confirm_or_refuse(question: str, yes: bool, action: str, subject: str, hint: str) -> None:
    """The one confirmation of rm and gc: --yes goes ahead, a terminal asks (default no),
    anything else is refused with exit 2; a "no" is exit 2 and nothing changes."""
    from vmm.core.errors import UsageError

    refuse_without_terminal(yes, action, subject, hint)
    if not yes and not typer.confirm(question, default=False, err=True):
        raise UsageError(f"{action} not confirmed", subject, "nothing was changed")




class ExitQuietly(Exception):
    """A command that ends with an exit code and has nothing to add on stderr (``vmm serve``
    passing on vLLM's code). ``typer.Exit(130)`` would read as Ctrl-C and print a line."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def sigterm_interrupts():
    """SIGTERM ends the command like Ctrl-C (exit 130, resumable state kept)."""
    import signal

    def _term(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread (embedding)
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
        if code == Interrupted.exit_code:
            # typer 0.29 (core.py _main) turns KeyboardInterrupt into Exit(130), which
            # click returns silently when not in standalone mode.
            render.note(Interrupted("interrupted", "", "run the same command again to resume").line())
    except VmmError as exc:
        if settings.debug():
            import traceback

            traceback.print_exc()
        render.note(exc.line())
        code = exc.exit_code
    except ExitQuietly as exc:
        code = exc.code
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        render.note(Interrupted("interrupted", "", "run the same command again to resume").line())
        code = Interrupted.exit_code
    except TyperException as exc:
        render.note(_usage_line(exc))
        code = getattr(exc, "exit_code", 2) or 2
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 1
        if settings.debug():
            raise
        render.note(f"error: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
                    "(this is a bug in vmm; rerun with VMM_DEBUG=1 and report the traceback)")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    sys.exit(code)
