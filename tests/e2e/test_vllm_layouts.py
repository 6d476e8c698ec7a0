"""vLLM's own parser and ParallelConfig / SpeculativeConfig accept the layouts vmm plans:
TP, DP replicas, expert parallelism and MTP, on real configs (tests/data/real_configs) planned
for named GPU types. Marked ``e2e`` (vLLM's python from the ``vllm`` on PATH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "data" / "real_configs"

# (config, --gpus, extra vmm flags, the layout vmm must pick: tp, dp, ep, speculative method)
CASES = [
    ("meta-llama--Llama-3.1-8B-Instruct.json", "8xH100", [], (1, 8, False, None)),
    ("openai--gpt-oss-120b.json", "4xH100", [], (4, 1, False, None)),
    ("Qwen--Qwen3-32B.json", "2xH100", [], (2, 1, False, None)),
    ("Qwen--Qwen3-Next-80B-A3B-Thinking.json", "4xH200", ["--speculative", "mtp:2"], (4, 1, False, "mtp")),
    ("deepseek-ai--DeepSeek-V3.json", "8xH200", [], (1, 8, True, None)),
    ("deepseek-ai--DeepSeek-V3.json", "8xH200", ["-tp", "8", "--speculative", "mtp"], (8, 1, True, "mtp")),
    ("mistralai--Mixtral-8x7B-v0.1.json", "4xA100-80GB", ["--expert-parallel"], (4, 1, True, None)),
    ("haoyangli-amd--DeepSeek-V3.2-exp-ptpc.json", "8xH20", ["--speculative", "mtp:3"], (8, 1, True, "mtp")),
]
# Weights as vmm would read them from the checkpoint headers; here the recipe-style estimate
# (parameters x bytes), written as one sparse tensor of that size.
WEIGHT_BYTES = {"meta-llama--Llama-3.1-8B-Instruct.json": 16 * 10**9, "openai--gpt-oss-120b.json": 65 * 10**9,
                "Qwen--Qwen3-32B.json": 65 * 10**9, "Qwen--Qwen3-Next-80B-A3B-Thinking.json": 160 * 10**9,
                "deepseek-ai--DeepSeek-V3.json": 671 * 10**9,
                "haoyangli-amd--DeepSeek-V3.2-exp-ptpc.json": 671 * 10**9, "mistralai--Mixtral-8x7B-v0.1.json": 93 * 10**9}


def _probe(argvs: list[list[str]]) -> list[dict]:
    from vmm.core.serving import vllm_env

    found = vllm_env.find_vllm()
    if found is None or not found.python:
        pytest.fail("no `vllm` on PATH: run this lane with PATH=/path/to/vllm-venv/bin:$PATH")
    done = subprocess.run([found.python, str(HERE / "vllm_layouts_probe.py")], input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("@@ORACLE@@")[-1])


def test_planned_layouts_pass_vllms_parallel_and_speculative_configs(tmp_path, monkeypatch):
    sys.path.insert(0, str(HERE.parent))
    import builders
    from conftest import run_vmm

    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("VMM_ROOT", str(root))
    argvs, expected = [], []
    for name, gpus, flags, want in CASES:
        repo = name.removesuffix(".json").replace("--", "/", 1)
        if not (root / name.removesuffix(".json")).exists():
            elements = WEIGHT_BYTES[name] // 2
            builders.make_model(root, repo, cfg=json.loads((CONFIGS / name).read_text()),
                                tensors={"model.embed_tokens.weight": ("BF16", [elements // 1024, 1024])})
        run = run_vmm("serve", repo, "--dry-run", "--json", "--gpus", gpus, *flags)
        assert run.exit_code == 0, (repo, run.stderr)
        doc = run.json()
        spec = (doc["speculative_config"] or {}).get("method")
        assert (doc["tensor_parallel_size"], doc["data_parallel_size"], doc["expert_parallel"], spec) == want, repo
        argvs.append(doc["command"])
        expected.append(want)
    for argv, want, got in zip(argvs, expected, _probe(argvs)):
        assert "error" not in got, (argv, got)
        assert (got["tensor_parallel_size"], got["data_parallel_size"], got["enable_expert_parallel"]) == want[:3]
        assert got["max_model_len"] == int(argv[argv.index("--max-model-len") + 1])
        if want[3]:
            assert got["speculative"]["method"] == "mtp", got
