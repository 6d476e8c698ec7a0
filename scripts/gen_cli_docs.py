#!/usr/bin/env python3
"""Regenerate docs/cli.md from the `--help` of every vmm command.

Walks the Typer app (groups included), runs the real entry point with ``--help`` for each
command at a fixed width (COLUMNS=100, TERM=dumb, NO_COLOR=1) so the output is the same on
every machine, and writes one section per command. ``--check`` exits 1 when docs/cli.md is
stale (tests/cli/test_docs.py runs it); run without arguments after changing a command.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "cli.md"
sys.path.insert(0, str(REPO))

HEADER = """# vmm command reference

Generated from `--help` by `scripts/gen_cli_docs.py`; do not edit by hand (a test fails when
this file is stale: run `.venv/bin/python scripts/gen_cli_docs.py`). Exit codes:
[exit-codes.md](exit-codes.md). Environment variables: [environment.md](environment.md).
"""


def _help(args: list[str]) -> str:
    from vmm import render
    from vmm.cli import main

    out = io.StringIO()
    render.reset_consoles()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*args, "--help"])
        except SystemExit:
            pass
    return "\n".join(line.rstrip() for line in out.getvalue().strip("\n").splitlines())


def _commands(group, prefix: list[str]) -> list[list[str]]:
    found = []
    for name in sorted(getattr(group, "commands", {})):
        command = group.commands[name]
        if getattr(command, "hidden", False):
            continue
        found.append([*prefix, name])
        if getattr(command, "commands", None):
            found.extend(_commands(command, [*prefix, name]))
    return found


def render_doc() -> str:
    os.environ.update(COLUMNS="100", TERM="dumb", NO_COLOR="1")
    os.environ.pop("FORCE_COLOR", None)
    import typer

    from vmm.cli import app

    root = typer.main.get_command(app)
    parts = [HEADER, "## vmm\n", "```text", _help([]), "```\n"]
    for path in _commands(root, []):
        parts += [f"## vmm {' '.join(path)}\n", "```text", _help(path), "```\n"]
    return "\n".join(parts)


def main() -> int:
    text = render_doc()
    if "--check" in sys.argv[1:]:
        if not DOC.is_file() or DOC.read_text() != text:
            sys.stderr.write("docs/cli.md is stale: run `.venv/bin/python scripts/gen_cli_docs.py`\n")
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    sys.stdout.write(f"wrote {DOC.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
