"""README's set-up commands are what CI runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import readme_commands  # noqa: E402


def test_readme_marks_an_install_and_a_test_command():
    assert readme_commands.commands("install")
    tests = readme_commands.commands("test")
    assert tests and any("pytest" in c for c in tests)


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_commands.py test" in ci
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_commands.py"), "test"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert out == readme_commands.commands("test")
