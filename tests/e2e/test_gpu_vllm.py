"""Opt-in: real vLLM on an NVIDIA GPU. The plan's max_model_len must be what vLLM serves.

Marked ``gpu``: skipped where no GPU is visible (this project's CI and development machines
have none; see docs/serve.md). Run on a GPU host with vLLM on PATH:
``.venv/bin/python -m pytest -m gpu tests/e2e/test_gpu_vllm.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytestmark = pytest.mark.gpu


def _gpus():
    from vmm.core.serving import gpu

    return gpu.discover()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not _gpus():
        pytest.skip("no NVIDIA GPU visible (nvidia-smi/NVML find none)")
    from vmm.core.serving import vllm_env

    found = vllm_env.find_vllm()
    if found is None or found.is_cpu:
        pytest.skip("needs a CUDA build of vLLM on PATH")
    import tinymodel

    root = tmp_path_factory.mktemp("models")
    tinymodel.build(root / "vmm-test--tiny-llama", tokenizer=True)
    return root


def test_planned_max_model_len_is_what_vllm_serves(tiny):
    env = {**os.environ, "VMM_ROOT": str(tiny)}
    plan = json.loads(subprocess.run([sys.executable, "-m", "vmm", "serve", "vmm-test/tiny-llama", "--dry-run",
                                      "--json"], capture_output=True, text=True, env=env, check=True).stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "serve", "vmm-test/tiny-llama", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        base = proc.stdout.readline().strip()
        assert base, "vmm serve did not become ready"
        models = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=30))
        assert models["data"][0]["max_model_len"] == plan["max_model_len"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _serve_and_read_kv(tiny, extra: list[str]) -> tuple[dict, dict]:
    """Plan, start, wait for ready, then read what vLLM logged about its KV cache: "GPU KV cache
    size: N tokens" and "Maximum concurrency for L tokens per request: X" (vllm/v1/core/
    kv_cache_utils.py, 0.32-0.34 wording). Returns (the plan, what vLLM reported)."""
    import re
    import threading

    env = {**os.environ, "VMM_ROOT": str(tiny)}
    args = ["vmm-test/tiny-llama", *extra]
    plan = json.loads(subprocess.run([sys.executable, "-m", "vmm", "serve", *args, "--dry-run", "--json"],
                                     capture_output=True, text=True, env=env, check=True).stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert proc.stdout.readline().strip(), "vmm serve did not become ready"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    text = "".join(lines)
    tokens = [int(t.replace(",", "")) for t in re.findall(r"GPU KV cache size: ([\d,]+) tokens", text)]
    concurrency = [float(c) for c in re.findall(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x", text)]
    return plan, {"kv_tokens_per_rank": tokens, "max_concurrency_per_rank": concurrency}


@pytest.mark.parametrize("layout", [["-tp", "2"], ["-dp", "2"]], ids=["tp2", "dp2"])
def test_tp_and_dp_layouts_report_what_the_plan_says(tiny, layout):
    """Unrun here (no GPU lent): on a 2-GPU host, the planned layout starts and vLLM's own KV
    figures sit next to the plan's (printed, and within 25 %: vmm's margins are estimates)."""
    if len(_gpus()) < 2:
        pytest.skip("needs two GPUs")
    plan, seen = _serve_and_read_kv(tiny, [*layout, "--gpu-ids", "0,1"])
    print(json.dumps({"layout": layout, "plan": {k: plan[k] for k in (
        "tensor_parallel_size", "data_parallel_size", "max_model_len", "max_concurrency")},
        "plan_kv_tokens_per_gpu": plan["estimate"]["kv_cache_tokens"], "vllm": seen}))
    assert seen["kv_tokens_per_rank"], "vLLM logged no KV cache size"
    assert (plan["tensor_parallel_size"], plan["data_parallel_size"]) == ((2, 1) if "-tp" in layout else (1, 2))
    reported = sum(seen["max_concurrency_per_rank"][:plan["data_parallel_size"]])
    assert abs(reported - plan["max_concurrency"]) <= 0.25 * max(reported, plan["max_concurrency"])
