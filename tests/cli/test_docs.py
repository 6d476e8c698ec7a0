"""The docs stay true: the CLI reference is generated, codes and variables are documented."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO
from vmm.core.errors import EXIT_CODES
from vmm.core.settings import ENVIRONMENT


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + " (run: .venv/bin/python scripts/gen_cli_docs.py)"


def test_cli_reference_covers_every_command():
    import typer

    from vmm.cli import app

    text = (REPO / "docs" / "cli.md").read_text()
    for name, command in typer.main.get_command(app).commands.items():
        if not command.hidden:
            assert f"## vmm {name}\n" in text, name


def test_every_exit_code_is_documented():
    text = (REPO / "docs" / "exit-codes.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert set(EXIT_CODES) <= documented, set(EXIT_CODES) - documented


def test_every_environment_variable_is_documented():
    text = (REPO / "docs" / "environment.md").read_text()
    missing = [var for var in ENVIRONMENT if f"`{var}`" not in text]
    assert not missing, missing
