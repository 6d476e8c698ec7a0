#!/usr/bin/env python3
"""How much of a repo does a plan from the Hub read, and how long does it take?

Builds (once) sparse repos under bench/out/plan-repos with real configs and real
safetensors headers (Qwen2-7B-Instruct 4 shards, Meta-Llama-3-8B-Instruct 4 shards,
Llama-3-70B-like 30 shards) and a GGUF with a 152,064-token vocabulary, serves them from
tests/hubserver.py with a per-connection cap on body bytes/s, and times
``hub.remote.read_remote_model`` (what `vmm serve NAME --dry-run` and `vmm pull --fit` do):
bytes served (the server's counters), requests, wall time (median), with a delay before
each answer standing for a link's round trip (50 ms by default), with the default
parallelism and with one request at a time. The time to download the whole repo at the
same cap over 8 connections is computed, not measured.

    .venv/bin/python bench/plan_from_hub.py [--rate 104857600] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import builders as b  # noqa: E402
from hubserver import HubServer  # noqa: E402

LLAMA3_70B = {**b.LLAMA3_8B_INSTRUCT, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8}


def build(out: Path) -> dict[str, Path]:
    repos = {
        "Qwen/Qwen2-7B-Instruct": (b.QWEN2_7B_INSTRUCT, 4),
        "meta-llama/Meta-Llama-3-8B-Instruct": (b.LLAMA3_8B_INSTRUCT, 4),
        "bench/Llama-3-70B-like": (LLAMA3_70B, 30),
    }
    dirs = {}
    for name, (cfg, shards) in repos.items():
        d = out / name.replace("/", "--")
        if not (d / "config.json").exists():
            b.make_safetensors_model(d, cfg=cfg, shards=shards, tokenizer_config={"model_max_length": 131072})
        dirs[name] = d
    g = out / "bench--Qwen2-7B-GGUF"
    if not any(g.glob("*.gguf")):
        path = b.make_gguf_model(g, arch="qwen2", quant="Q4_K_M", vocab=152064)
        # A real Q4_K_M 7B file is ~4.7 GB: extend the file sparsely (data past the tensors
        # the header describes is never read) so the share is against a realistic size.
        os.truncate(path, 4_683_073_536)
    dirs["bench/Qwen2-7B-GGUF"] = g
    return dirs


def measure(hub: HubServer, name: str, runs: int, parallel: int) -> tuple[float, int, int, int]:
    from vmm.core.hub import remote

    remote.PARALLEL_REQUESTS = parallel
    times, served, requests, repo_bytes = [], 0, 0, 0
    for _ in range(runs):
        hub.reset_counters()
        t0 = time.perf_counter()
        found = remote.read_remote_model(name)
        times.append(time.perf_counter() - t0)
        served, requests, repo_bytes = hub.total_served(), found.requests, found.repo_bytes
    return statistics.median(times), served, requests, repo_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100 * 1024 * 1024, help="bytes/s per connection")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each answer")
    args = parser.parse_args()
    dirs = build(REPO / "bench" / "out" / "plan-repos")
    with HubServer() as hub:
        for name, d in dirs.items():
            hub.add_repo(name, d, fake_hashes=True)
        hub.faults.rate_bytes_per_s = args.rate
        hub.faults.latency_s = args.latency
        os.environ["HF_ENDPOINT"] = hub.url
        print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}; per-connection cap {args.rate / 2**20:.0f} MiB/s, "
              f"{args.latency * 1000:.0f} ms before each answer, median of {args.runs}")
        print("| repo | repo size | bytes read | share | requests | plan (parallel) | plan (1 at a time) "
              "| whole repo at the cap, 8 connections |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in dirs:
            wall, served, requests, repo_bytes = measure(hub, name, args.runs, 8)
            serial, _, _, _ = measure(hub, name, args.runs, 1)
            download = repo_bytes / (8 * args.rate)
            print(f"| {name} | {repo_bytes / 1e9:.2f} GB | {served / 1e3:.0f} kB | {served / repo_bytes:.4%} "
                  f"| {requests} | {wall:.3f} s | {serial:.3f} s | {download:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
