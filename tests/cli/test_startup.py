"""Start-up cost: `vmm ls` imports nothing heavy (numpy, gguf, huggingface_hub, pydantic)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import builders as b

HEAVY = ("numpy", "gguf", "huggingface_hub", "jinja2", "pydantic", "vllm")


def _modules_after(*args: str) -> set[str]:
    code = (
        "import sys\n"
        "from vmm.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('MODULES ' + ' '.join(sys.modules) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES "))
    return {m.split(".")[0] for m in line.split()[1:]}


def test_ls_and_help_import_nothing_heavy(tmp_path):
    b.make_model(tmp_path, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    b.make_model(tmp_path, "org/x-GGUF", kind="gguf")
    for args in (("ls", "--root", str(tmp_path)), ("ls", "--json", "--root", str(tmp_path)), ("--help",)):
        loaded = _modules_after(*args)
        assert not loaded & set(HEAVY), (args, loaded & set(HEAVY))


def test_simple_parameters_still_get_their_types():
    """The pydantic-free coercion of str/Path/bool parameters gives typer's types."""
    import typer
    from typer.testing import CliRunner

    from vmm import _typer_fast

    _typer_fast.install()
    app = typer.Typer()
    seen = {}

    @app.command()
    def cmd(where: Path, name: str = "x", flag: bool = False) -> None:
        seen.update(where=where, name=name, flag=flag)

    result = CliRunner().invoke(app, ["some/dir", "--name", "y", "--flag"])
    assert result.exit_code == 0, result.output
    assert seen == {"where": Path("some/dir"), "name": "y", "flag": True}


def test_typer_patch_applied_and_keeps_pydantic_out_of_ls(tmp_path):
    """The typer range pinned in pyproject.toml is the one vmm/_typer_fast.py fits: the patch
    applies (its signature checks pass) and `vmm ls` imports no pydantic."""
    import vmm.cli.app  # noqa: F401 - installs the patch at import
    from vmm import _typer_fast

    assert _typer_fast.installed()
    code = ("import sys\nfrom vmm.cli import main\nfrom vmm import _typer_fast\n"
            "try:\n    main(['ls', '--root', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(f'APPLIED {_typer_fast.installed()} PYDANTIC {\"pydantic\" in sys.modules}\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert "APPLIED True PYDANTIC False" in proc.stderr, proc.stderr


def test_typer_patch_refuses_internals_of_another_shape():
    from vmm import _typer_fast

    def build_runtime_param(descriptor, extra):      # a typer whose signature moved
        raise AssertionError("never called")

    class RuntimeParam:
        def __init__(self, parameter_info, annotation):
            pass

        def _coerce_value(self, value, param, ctx):
            pass

    def resolve_type_descriptor(annotation, parameter_info):
        pass

    assert _typer_fast._signatures_match(build_runtime_param, RuntimeParam, resolve_type_descriptor) is False
    assert _typer_fast._signatures_match(lambda descriptor: None, RuntimeParam, resolve_type_descriptor) is True
