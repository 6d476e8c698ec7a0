#!/usr/bin/env python3
"""How fast is `vmm ls` on a root of 500 models, next to `vmm --help`?

Builds (once) a root of 500 sparse models of every format under bench/out/ls-root: 300
sharded safetensors (real configs, 1-4 shards), 100 pytorch, 80 GGUF (single, split and
multi-quant) and 20 hand-made directories; then runs each command as a subprocess several
times and prints the median wall time and its ratio to `vmm --help`.

    .venv/bin/python bench/ls.py [--runs 15] [--models 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import builders as b  # noqa: E402


def build_root(root: Path, count: int) -> None:
    marker = root / f".built-{count}"
    if marker.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    configs = [b.QWEN2_7B_INSTRUCT, b.LLAMA3_8B_INSTRUCT, b.MISTRAL_7B_V02, b.YI_6B]
    n_st, n_pt, n_gguf = int(count * 0.6), int(count * 0.2), int(count * 0.16)
    for i in range(count):
        if i < n_st:
            b.make_model(root, f"org{i % 37}/safetensors-model-{i}", cfg=configs[i % 4], shards=1 + i % 4)
        elif i < n_st + n_pt:
            b.make_model(root, f"org{i % 37}/pytorch-model-{i}", kind="pytorch", cfg=b.TINY_LLAMA, shards=1 + i % 3)
        elif i < n_st + n_pt + n_gguf:
            d = b.make_model(root, f"org{i % 37}/model-{i}-GGUF", kind="gguf", quant="Q4_K_M", split=1 + i % 3)
            if i % 2:
                b.make_gguf_model(d, quant="Q8_0")
        else:
            b.make_hand_made_dir(root, f"hand-made-{i}")
    marker.write_text("")


def median_time(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--models", type=int, default=500)
    args = parser.parse_args()
    root = REPO / "bench" / "out" / f"ls-root-{args.models}"
    t0 = time.perf_counter()
    build_root(root, args.models)
    built = time.perf_counter() - t0
    vmm = str(Path(sys.executable).with_name("vmm"))
    env = {**os.environ, "VMM_ROOT": str(root), "NO_COLOR": "1"}
    listed = subprocess.run([vmm, "ls", "--json"], capture_output=True, text=True, env=env, check=True)
    import json

    n = len(json.loads(listed.stdout)["models"])
    du = subprocess.run(["du", "-sh", str(root)], capture_output=True, text=True).stdout.split()[0]
    apparent = sum(m["size_bytes"] for m in json.loads(listed.stdout)["models"])
    cases = {"vmm --help": [vmm, "--help"], "vmm ls": [vmm, "ls"], "vmm ls --json": [vmm, "ls", "--json"]}
    results = {name: median_time(argv, args.runs, env) for name, argv in cases.items()}
    base = results["vmm --help"]
    print(f"root: {n} models, {apparent / 1e12:.2f} TB apparent, {du} on disk (built in {built:.1f} s)")
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'command':<16} {'median s':>9} {'x --help':>9}   ({args.runs} runs)")
    for name, seconds in results.items():
        print(f"{name:<16} {seconds:>9.3f} {seconds / base:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
