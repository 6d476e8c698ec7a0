"""GPU discovery through a fake nvidia-smi (no NVML here): parsing, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import assert_error_line, run_vmm
from vmm.core.serving import gpu
from vmm.core.errors import IncompatibleError

SMI = """0, GPU-aaaa1111, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0
1, GPU-bbbb2222, NVIDIA H100 80GB HBM3, 81559, 1024, 9.0
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    def install(output: str, code: int = 0):
        exe = tmp_path / "nvidia-smi"
        exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {code}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
        monkeypatch.setattr(gpu, "_from_nvml", lambda: None)
    return install


def test_nvidia_smi_rows_become_gpus(fake_smi):
    fake_smi(SMI)
    found = gpu.discover()
    assert [(g.index, g.total_bytes, g.free_bytes, g.compute_capability) for g in found] == [
        (0, 81559 << 20, 80000 << 20, "9.0"), (1, 81559 << 20, 1024 << 20, "9.0")]


@pytest.mark.parametrize("visible,indices", [("1", [1]), ("GPU-aaaa", [0]), ("", []), ("1,0", [1, 0]), ("0,7,1", [0])])
def test_cuda_visible_devices_is_honoured(fake_smi, monkeypatch, visible, indices):
    fake_smi(SMI)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert [g.index for g in gpu.discover()] == indices


def test_garbage_from_nvidia_smi_is_a_clean_error(fake_smi):
    with pytest.raises(IncompatibleError):
        gpu.parse_nvidia_smi("0, x, name, lots, 1, 9.0\n")
    fake_smi("not,a,gpu\n")
    with pytest.raises(IncompatibleError):
        gpu.discover()


def test_a_failing_nvidia_smi_means_no_gpu(fake_smi):
    fake_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n", code=9)
    assert gpu.discover() == []


def test_serve_plans_for_the_gpus_it_finds(fake_smi, root):
    import builders as b

    fake_smi(SMI)
    b.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["estimate"]["gpu_count"] == 2 and doc["estimate"]["gpu_memory_bytes"] == 81559 << 20
    assert doc["tensor_parallel_size"] == 1 and doc["dtype"] == "bfloat16"   # compute capability 9.0
    assert_error_line(run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--tensor-parallel-size", "4"),
                      6, "exceeds the GPUs")


def test_compute_apps_rows_map_to_gpu_indices_and_skip_what_does_not_parse():
    gpus = gpu.parse_nvidia_smi(SMI)
    rows = "GPU-aaaa1111, 4242, 30000\nGPU-bbbb2222, 77, [N/A]\nGPU-zzzz, 1, 5\ngarbage\n"
    assert [(p.gpu_index, p.pid, p.used_bytes) for p in gpu.parse_compute_apps(rows, gpus)] == [
        (0, 4242, 30000 << 20)]
