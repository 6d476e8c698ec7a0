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
