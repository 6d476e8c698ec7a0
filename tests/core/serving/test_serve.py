"""serve: the planner's arithmetic, the command it builds, and running it with a fake vLLM."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import builders as b
from conftest import REPO, assert_error_line, free_port, run_vmm

GIB = 1 << 30
FAKE_BIN = REPO / "tests" / "fakevllm"
TINY = {**b.LLAMA3_8B_INSTRUCT, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 1000, "max_position_embeddings": 512,
        "torch_dtype": "float32"}


@pytest.fixture
def models(root):
    b.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    b.make_model(root, "meta-llama/Meta-Llama-3-8B-Instruct", cfg=b.LLAMA3_8B_INSTRUCT, shards=4)
    b.make_model(root, "deepseek-ai/DeepSeek-V2-Lite", cfg=b.DEEPSEEK_V2_LITE, shards=2)
    b.make_model(root, "org/tiny", cfg=TINY)
    return root


def dry(*args):
    run = run_vmm("serve", *args, "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    return run.json()


def kv_tokens(budget_gib, weight_bytes, tp, hidden, inter, kv_per_token):
    """The planner's rule written out: budget - weights/tp - (1 GiB + 0.5 GiB graphs + activations)."""
    activations = 8192 * (4 * hidden + 2 * inter / tp) * 2
    free = budget_gib * GIB - weight_bytes / tp - (GIB + GIB / 2 + activations)
    return int(free // kv_per_token)


QWEN_WEIGHTS = b.QWEN2_7B_INSTRUCT_PARAMETERS * 2          # bf16


def test_qwen2_7b_on_one_80gib_gpu_serves_the_full_context(models):
    doc = dry("Qwen/Qwen2-7B-Instruct", "--gpus", "1", "--gpu-memory", "80GiB")
    assert doc["tensor_parallel_size"] == 1 and doc["pipeline_parallel_size"] == 1
    assert doc["max_model_len"] == 32768 and doc["gpu_memory_utilization"] == 0.92
    # 2 (K,V) x 28 layers x 4 KV heads x 128 head dim x 2 bytes
    assert doc["estimate"]["kv_cache_bytes_per_token"] == 2 * 28 * 4 * 128 * 2 == 57344
    assert doc["estimate"]["weight_bytes"] == QWEN_WEIGHTS
    assert doc["estimate"]["kv_cache_tokens"] == kv_tokens(0.92 * 80, QWEN_WEIGHTS, 1, 3584, 18944, 57344)
    command = doc["command"]
    assert command[:3] == ["vllm", "serve", str(models / "Qwen--Qwen2-7B-Instruct")]
    assert command[command.index("--served-model-name") + 1] == "Qwen/Qwen2-7B-Instruct"
    assert command[command.index("--max-model-len") + 1] == "32768"


@pytest.mark.parametrize("gpus,expected_tp", [("2", 2), ("3", 2)])
def test_qwen2_7b_on_16gib_gpus_needs_two_and_never_three(models, gpus, expected_tp):
    # tp=1: 14.2 GiB of weights + 2.3 GiB margin exceed 0.92 x 16 = 14.7 GiB.
    assert kv_tokens(0.92 * 16, QWEN_WEIGHTS, 1, 3584, 18944, 57344) < 0
    # tp=3 is invalid: 28 heads do not divide by 3.
    doc = dry("Qwen/Qwen2-7B-Instruct", "--gpus", gpus, "--gpu-memory", "16GiB")
    assert doc["tensor_parallel_size"] == expected_tp
    per_token = 2 * 28 * (4 // 2) * 128 * 2
    assert doc["estimate"]["kv_cache_bytes_per_token"] == per_token
    assert kv_tokens(0.92 * 16, QWEN_WEIGHTS, 2, 3584, 18944, per_token) >= 32768
    assert doc["max_model_len"] == 32768


def test_llama3_8b_on_8x24gib_uses_every_gpu(models):
    # 16 GB of weights are more than a quarter of a 24 GiB GPU: TP over all eight, as the
    # recipes do for a model that needs the memory; on 80 GiB GPUs it is replicas of TP 1.
    weights = b.LLAMA3_8B_INSTRUCT_PARAMETERS * 2
    per_token = 2 * 32 * 8 * 128 * 2
    assert kv_tokens(0.92 * 24, weights, 1, 4096, 14336, per_token) >= 8192
    doc = dry("meta-llama/Meta-Llama-3-8B-Instruct", "--gpus", "8", "--gpu-memory", "24GiB")
    assert (doc["tensor_parallel_size"], doc["data_parallel_size"], doc["max_model_len"]) == (8, 1, 8192)
    doc = dry("meta-llama/Meta-Llama-3-8B-Instruct", "--gpus", "8xH100")
    assert (doc["tensor_parallel_size"], doc["data_parallel_size"]) == (1, 8)
    command = doc["command"]
    assert command[command.index("--data-parallel-size") + 1] == "8"
    assert doc["max_concurrency"] > 8 * 10 and doc["expert_parallel"] is False


def test_too_small_gpus_are_refused_with_what_would_fit(models):
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--gpus", "1", "--gpu-memory", "8GiB")
    assert_error_line(run, 6, "does not fit", "4 such GPUs would fit it")


def test_a_short_fit_is_capped_or_refused_with_min_context(models):
    # Llama-3-8B on one 19 GiB GPU: weights fit, the KV cache holds fewer than 8192 tokens.
    weights = b.LLAMA3_8B_INSTRUCT_PARAMETERS * 2
    tokens = kv_tokens(0.92 * 19, weights, 1, 4096, 14336, 131072)
    assert 16 < tokens < 8192
    doc = dry("meta-llama/Meta-Llama-3-8B-Instruct", "--gpus", "1", "--gpu-memory", "19GiB")
    assert doc["max_model_len"] == tokens // 16 * 16
    run = run_vmm("serve", "meta-llama/Meta-Llama-3-8B-Instruct", "--dry-run", "--gpus", "1",
                  "--gpu-memory", "19GiB", "--min-context", "8192")
    assert_error_line(run, 6, "--min-context")


def test_mla_kv_cache_is_not_split_by_tensor_parallel(models):
    one = dry("deepseek-ai/DeepSeek-V2-Lite", "--gpus", "1", "--gpu-memory", "80GiB")
    two = dry("deepseek-ai/DeepSeek-V2-Lite", "--gpus", "2", "--gpu-memory", "24GiB")
    assert one["estimate"]["kv_cache_bytes_per_token"] == two["estimate"]["kv_cache_bytes_per_token"] \
        == (512 + 64) * 27 * 2
    assert one["max_model_len"] == 163840       # yarn: max_position_embeddings is already scaled


def test_fp8_kv_cache_halves_bytes_per_token(models):
    doc = dry("Qwen/Qwen2-7B-Instruct", "--gpus", "1", "--gpu-memory", "80GiB", "--kv-cache-dtype", "fp8")
    assert doc["estimate"]["kv_cache_bytes_per_token"] == 57344 // 2
    assert "--kv-cache-dtype" in doc["command"]


def test_invalid_forced_tensor_parallel_is_refused(models):
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--gpus", "4", "--gpu-memory", "80GiB",
                  "--tensor-parallel-size", "3")
    assert_error_line(run, 6, "vLLM cannot load the model at this layout", "28 attention heads")


def test_nodes_use_pipeline_parallel_over_ray(models):
    doc = dry("Qwen/Qwen2-7B-Instruct", "--gpus", "1", "--gpu-memory", "16GiB", "--nodes", "2")
    assert doc["pipeline_parallel_size"] == 2 and doc["tensor_parallel_size"] == 1
    command = doc["command"]
    assert command[command.index("--distributed-executor-backend") + 1] == "ray"
    assert any("ray start --address" in line for line in doc["ray_commands"])


def test_arguments_after_double_dash_override_the_computed_ones(models):
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--gpus", "1", "--gpu-memory", "80GiB", "--dry-run",
                  "--json", "--", "--max-model-len", "4096", "--enable-prefix-caching")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    command = doc["command"]
    assert command.count("--max-model-len") == 1 and command[command.index("--max-model-len") + 1] == "4096"
    assert "--enable-prefix-caching" in command


def test_bad_hardware_flags_are_usage_errors(models):
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "2"), 2, "--gpus N needs --gpu-memory")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpu-memory", "24GiB"), 2, "--gpu-memory needs --gpus")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "8xV100"), 2,
                      "unknown GPU type in --gpus", "H200")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "0xH100"), 2, "bad --gpus")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "1xH100", "--gpu-policy", "most"), 2,
                      "--gpu-policy")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "1xH100", "--speculative", "medusa"), 2,
                      "unknown --speculative")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "1xH100", "--speculative", "mtp"), 6,
                      "no MTP layers")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "1", "--gpu-memory", "lots"), 2,
                      "malformed size")
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run", "--device", "tpu"), 2, "--device")


def test_no_gpu_and_no_plan_is_exit_6(models, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))          # no nvidia-smi, no vllm
    assert_error_line(run_vmm("serve", "org/tiny", "--dry-run"), 6, "no GPU found")


def test_mismatching_quantization_is_refused(root):
    cfg = {**TINY, "quantization_config": {"quant_method": "awq", "bits": 4}}
    b.make_model(root, "org/awq", cfg=cfg)
    run = run_vmm("serve", "org/awq", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB", "--quantization", "gptq")
    assert_error_line(run, 2, "disagrees")


def test_checkpoint_quantization_on_an_unquantized_model_is_refused_but_online_fp8_is_fine(models):
    run = run_vmm("serve", "org/tiny", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB", "--quantization", "awq")
    assert_error_line(run, 2, "unquantized checkpoint")
    doc = dry("org/tiny", "--gpus", "1", "--gpu-memory", "24GiB", "--quantization", "fp8")
    assert doc["command"][doc["command"].index("--quantization") + 1] == "fp8"


def test_cpu_plan_sets_kv_bytes_eager_and_fp32(models):
    doc = dry("org/tiny", "--device", "cpu")
    command = doc["command"]
    assert "--enforce-eager" in command and command[command.index("--dtype") + 1] == "float32"
    kv_bytes = int(command[command.index("--kv-cache-memory-bytes") + 1])
    assert kv_bytes >= 64 << 20
    assert doc["max_model_len"] == 512 and "--tensor-parallel-size" not in command


def test_cpu_refuses_a_head_size_its_attention_cannot_run(root):
    b.make_model(root, "org/h16", cfg={**TINY, "num_attention_heads": 8, "num_key_value_heads": 8})
    assert_error_line(run_vmm("serve", "org/h16", "--dry-run", "--device", "cpu"), 6, "head_dim 16")


def test_emit_docker_and_systemd_use_the_same_plan(models):
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--gpus", "2", "--gpu-memory", "16GiB", "--emit", "docker")
    assert run.exit_code == 0, run.stderr
    words = shlex.split(run.stdout.replace("\\\n", " "))
    assert words[words.index("--tensor-parallel-size") + 1] == "2"
    assert f"{models}:{models}:ro" in words
    unit = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--gpus", "2", "--gpu-memory", "16GiB", "--emit", "systemd")
    assert "Restart=on-failure" in unit.stdout and "--tensor-parallel-size 2" in unit.stdout


# ------------------------------------------------------------------ running a (fake) vLLM



@pytest.fixture
def fake_env(models, tmp_path):
    return {"PATH": f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", "VMM_ROOT": str(models),
            "FAKE_VLLM_RECORD": str(tmp_path / "argv.json")}


def _serve(env, *extra, port=None):
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "serve", "org/tiny", "--device", "cpu", "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    return proc, port


def _vmm(env, *args):
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL, timeout=60)


def test_serve_waits_for_a_real_request_locks_the_model_and_forwards_sigterm(fake_env):
    proc, port = _serve(fake_env)
    try:
        url = proc.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}", proc.stderr.read() if proc.poll() is not None else url
        recorded = json.loads(Path(fake_env["FAKE_VLLM_RECORD"]).read_text())
        assert recorded["argv"][:2] == ["serve", str(Path(fake_env["VMM_ROOT"]) / "org--tiny")]
        assert recorded["env"]["VLLM_NO_USAGE_STATS"] == "1"
        ps = json.loads(_vmm(fake_env, "ps", "--json", "--interval", "0").stdout)
        assert [s["port"] for s in ps["servers"]] == [port]
        rm = _vmm(fake_env, "rm", "org/tiny", "--yes")
        assert rm.returncode == 8, rm.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert json.loads(_vmm(fake_env, "ps", "--json").stdout)["servers"] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_vllm_exit_code_passes_through(fake_env):
    proc, _ = _serve({**fake_env, "FAKE_VLLM_EXIT_ON_TERM": "3"})
    try:
        assert proc.stdout.readline().startswith("http://")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_vllm_dying_at_start_up_is_reported_with_a_hint(fake_env):
    proc, _ = _serve({**fake_env, "FAKE_VLLM_FAIL": "7"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 6 and out == ""              # vLLM's own code is in the line
    assert "CUDA out of memory" in err                      # vLLM's own output first
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "exited during start-up: exit code 7" in lines[0]
    assert "gpu-memory-utilization" in lines[0]


def test_missing_vllm_is_exit_127(models, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_error_line(run_vmm("serve", "org/tiny", "--device", "cpu"), 127, "vllm-model-manager[vllm]")


def test_detach_returns_when_ready_and_leaves_logs_ps_and_stop(fake_env):
    port = free_port()
    run = _vmm(fake_env, "serve", "org/tiny", "--device", "cpu", "--port", str(port), "--detach")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"http://127.0.0.1:{port}"
    try:
        ps = json.loads(_vmm(fake_env, "ps", "--json", "--interval", "0").stdout)["servers"]
        assert ps[0]["alive"] and ps[0]["detached"]
        assert "fake vllm starting" in _vmm(fake_env, "logs", "org/tiny").stdout
        assert _vmm(fake_env, "rm", "org/tiny", "--yes").returncode == 8   # the lock lives with vLLM
    finally:
        stop = _vmm(fake_env, "stop", str(port), "--json")
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["stopped"][0]["signal"] == "SIGTERM"


def test_online_fp8_quantization_is_planned_at_fp8_bytes(models):
    """--quantization fp8 on a bf16 checkpoint reaches the planner: vLLM stores the linear
    layers in 8 bits, so the 16 GB Llama 3 8B fits a 16 GiB GPU that it does not fit unquantized."""
    bf16 = run_vmm("serve", "meta-llama/Meta-Llama-3-8B-Instruct", "--dry-run", "--json",
                   "--gpus", "1", "--gpu-memory", "16GiB")
    assert bf16.exit_code == 6, bf16.stderr
    doc = dry("meta-llama/Meta-Llama-3-8B-Instruct", "--gpus", "1", "--gpu-memory", "16GiB",
              "--quantization", "fp8")
    checkpoint = b.LLAMA3_8B_INSTRUCT_PARAMETERS * 2
    assert doc["estimate"]["weight_bytes"] == checkpoint // 2
    assert doc["command"][doc["command"].index("--quantization") + 1] == "fp8"
    assert any("--quantization fp8: weights sized" in n for n in doc["notes"])


def test_serve_request_is_keyword_only():
    from vmm.core.serving.request import ServeRequest

    with pytest.raises(TypeError):
        ServeRequest("org/x", Path("/m/org--x"), "org/x")          # a new field can never shift the others
    req = ServeRequest(name="org/x", model_dir=Path("/m/org--x"), served_name="org/x", gguf_quant="Q4_K_M")
    assert req.but(max_model_len=4096).max_model_len == 4096 and req.max_model_len is None
