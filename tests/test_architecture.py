"""The layering contract (scripts/check_layers.py) holds, and bites on a wrong import."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", REPO / "scripts" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def tree(tmp_path):
    """A copy of the vmm package to break on purpose."""
    shutil.copytree(REPO / "vmm", tmp_path / "vmm", ignore=shutil.ignore_patterns("__pycache__", "data"))
    return tmp_path / "vmm"


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n\ndef _wrong():\n    " + line + "\n")


def test_the_package_keeps_its_layers():
    assert _checker().violations(REPO / "vmm") == []


@pytest.mark.parametrize("module, line, problem", [
    ("core/serving/planner.py", "from vmm.render import human_bytes", "vmm.core.serving.planner (core) imports vmm.render"),
    ("core/store/gc.py", "import typer", "imports typer"),
    ("core/model/formats.py", "from vmm.core.hub import pull", "vmm.core.model.formats (model) imports vmm.core.hub.pull (hub)"),
])
def test_a_wrong_import_fails(tree, module, line, problem):
    """A core module importing render or typer, a lower layer importing a higher one."""
    _append(tree / module, line)
    problems = _checker().violations(tree)
    assert any(problem in p for p in problems), problems


def test_a_cycle_hidden_by_a_lazy_import_fails(tree):
    _append(tree / "core" / "model" / "gguf_meta.py", "from vmm.core.model import config")
    problems = _checker().violations(tree)
    assert any(p.startswith("import cycle:") and "vmm.core.model.gguf_meta" in p for p in problems), problems


def test_a_module_outside_every_layer_is_named(tree):
    (tree / "core" / "stray.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="vmm.core.stray is in no layer"):
        _checker().violations(tree)


def test_command_line_exits_1_on_a_violation(tree):
    import subprocess

    _append(tree / "core" / "errors.py", "from vmm.cli import app")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_layers.py"), str(tree)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "vmm.core.errors (core) imports vmm.cli" in done.stdout


def test_every_module_is_in_the_architecture_page():
    """docs/architecture.md names each module with what it owns: a new module gets its row."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(REPO)) for p in sorted((REPO / "vmm").rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py", "_typer_fast.py") and f"`{p.relative_to(REPO)}`" not in text]
    assert not missing, f"add a row to docs/architecture.md for: {missing}"


def test_every_module_says_what_it_owns():
    import ast

    silent = [str(p.relative_to(REPO)) for p in sorted((REPO / "vmm").rglob("*.py"))
              if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, f"modules without a first docstring line: {silent}"
