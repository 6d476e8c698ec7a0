"""Every container that `vmm serve --emit kubernetes|ome|kserve` prints runs arguments the real vLLM parses.

The CPU lane (scripts/test-e2e) has vLLM's own parser: the Deployment's ``command + args``
and the LeaderWorkerSet leader's ``args`` (``sh -c SCRIPT`` runs them as ``"$0" "$@"``) go
through ``serve_arg_errors`` (tests/e2e/lane.py), as the computed commands in
test_real_vllm.py do. Kubernetes' ``$$(`` escape is undone first, as the kubelet would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import builders  # noqa: E402

from .lane import serve_arg_errors  # noqa: E402

pytestmark = pytest.mark.e2e


def _emit(root: Path, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "vmm", "serve", *args, "--root", str(root), "--emit", "kubernetes"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _container_argvs(docs: list[dict]) -> list[list[str]]:
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            [c] = doc["spec"]["template"]["spec"]["containers"]
            out.append(c["command"] + c["args"])
        elif doc["kind"] == "LeaderWorkerSet":
            [c] = doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
            assert c["command"][0:2] == ["sh", "-c"] and c["command"][2].endswith('exec "$0" "$@"')
            out.append(c["args"])
    return [[w.replace("$$(", "$(") for w in argv] for argv in out]


def test_kubernetes_containers_pass_vllms_own_parser(tmp_path):
    root = tmp_path / "models"
    builders.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=builders.QWEN2_7B_INSTRUCT, shards=4)
    builders.make_model(root, "meta-llama/Meta-Llama-3-8B-Instruct", cfg=builders.LLAMA3_8B_INSTRUCT, shards=4)
    argvs = []
    for name, shape in [("Qwen/Qwen2-7B-Instruct", ("--gpus", "1", "--gpu-memory", "80GiB")),
                        ("Qwen/Qwen2-7B-Instruct", ("--gpus", "2", "--gpu-memory", "12GiB")),
                        ("meta-llama/Meta-Llama-3-8B-Instruct", ("--gpus", "1", "--gpu-memory", "16GiB", "--nodes", "2")),
                        ("meta-llama/Meta-Llama-3-8B-Instruct", ("--gpus", "2", "--gpu-memory", "12GiB", "--nodes", "2",
                                                                 "--kv-cache-dtype", "fp8"))]:
        found = _container_argvs(_emit(root, name, *shape))
        assert len(found) == 1 and found[0][:2] == ["vllm", "serve"], found
        argvs += found
    assert any("--pipeline-parallel-size" in a for a in argvs)
    # The operators' runtimes (--emit ome / kserve) run the same plan with the folder where the
    # operator mounts it: $(MODEL_PATH) is expanded by Kubernetes, here by hand.
    for operator, model_at in (("ome", "$(MODEL_PATH)"), ("kserve", "/mnt/models")):
        proc = subprocess.run([sys.executable, "-m", "vmm", "serve", "Qwen/Qwen2-7B-Instruct", "--gpus", "1",
                               "--gpu-memory", "80GiB", "--root", str(root), "--emit", operator],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        [runtime] = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "ServingRuntime"]
        spec = runtime["spec"]
        [c] = [spec["engineConfig"]["runner"]] if operator == "ome" else spec["containers"]
        argv = [w.replace("$$(", "$(").replace(model_at, str(root / "Qwen--Qwen2-7B-Instruct"))
                for w in c["command"] + c["args"]]
        assert argv[:3] == ["vllm", "serve", str(root / "Qwen--Qwen2-7B-Instruct")]
        argvs.append(argv)
    errors = serve_arg_errors(argvs)
    assert errors == [None] * len(argvs), list(zip(argvs, errors))
    # The check can fail: a flag vLLM does not know is refused by the same parser.
    [bad] = serve_arg_errors([argvs[0] + ["--max-model-length", "64"]])
    assert bad and "--max-model-length" in bad
