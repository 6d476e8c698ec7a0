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


def _console_block(text: str, command: str) -> list[str]:
    """The output lines the README shows right after ``$ <command>``."""
    lines = text.split(f"$ {command}\n", 1)[1].splitlines()
    out = []
    for line in lines:
        if line.startswith(("$ ", "```")):
            break
        out.append(line)
    return out


def test_readme_tour_shows_real_output(tmp_path):
    import builders
    from conftest import run_vmm

    root = builders.make_demo_root(tmp_path / "models")
    readme = (REPO / "README.md").read_text()
    ls = run_vmm("--root", root, "ls")
    # The totals line's free bytes are this machine's (storage, issue 7).
    import re

    def free(lines):
        return [re.sub(r"; \S+ \S+ free on the filesystem$", "; N free on the filesystem", ln) for ln in lines]

    assert free(ls.stdout.splitlines()) == free(_console_block(readme, "vmm ls"))
    shards = run_vmm("--root", root, "shards", "my-finetune")
    shown = _console_block(readme, 'vmm shards my-finetune; echo "exit $?"')
    assert shards.stdout.splitlines() == shown[:-2]
    assert shards.stderr.strip() == shown[-2] and shown[-1] == f"exit {shards.exit_code}"
    inspect = run_vmm("--root", root, "inspect", "Qwen/Qwen2-7B-Instruct").stdout.splitlines()
    assert set(_console_block(readme, "vmm inspect Qwen/Qwen2-7B-Instruct")) <= set(inspect)
