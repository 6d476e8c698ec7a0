#!/usr/bin/env python3
"""Benchmark: `vmm push` / `vmm pull oci://` against `skopeo copy` of the same model, through a
real local registry (Debian's docker-registry, the CNCF distribution registry).

A model of a few shards of random bytes (default 4 x 96 MiB, generated into bench/out/,
git-ignored) is made managed, exported once as an OCI layout, then on the same box:

- push: ``skopeo copy oci:LAYOUT docker://REG/bench/m:1`` vs ``vmm push NAME REG/bench/m:1``,
  each into its own fresh registry (no blob already there);
- pull: ``skopeo copy docker://REG/bench/m:1 oci:DIR`` vs ``vmm pull oci://REG/bench/m:1`` into
  a fresh root (vmm verifies the sha256 of every byte and installs the model; skopeo checks
  digests too and writes a layout).

``--rate-mib N`` puts the stdlib fault proxy of tests/core/oci in front of the registry with a
per-connection cap (a WAN link / a registry that streams at N MiB/s per connection): where
parallel transfer pays. Times include process start.

    .venv/bin/python bench/oci.py [--size-mib 384] [--shards 4] [--rate-mib N] [--workers 8] [--record]

``--record`` appends the results to docs/benchmarks.md under "## OCI registry".
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
VMM = [sys.executable, "-m", "vmm"]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "core" / "oci")]


def make_model(root: Path, size_mib: int, shards: int) -> str:
    import builders

    repo_id = "bench/oci-model"
    model_dir = root / "bench--oci-model"
    model_dir.mkdir(parents=True)
    per = (size_mib << 20) // shards
    for i in range(shards):
        with open(model_dir / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as handle:
            left = per
            while left:
                piece = os.urandom(min(16 << 20, left))
                handle.write(piece)
                left -= len(piece)
    (model_dir / "config.json").write_text('{"model_type": "llama"}\n')
    builders.manage(model_dir, repo_id, hashes=True)
    return repo_id


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=384)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=None)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    from oci_registries import FaultProxy, need, start_registry

    skopeo = need("skopeo")
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oci-bench-", dir=OUT))
    try:
        src = work / "src"
        repo_id = make_model(src, args.size_mib, args.shards)
        total = sum(p.stat().st_size for p in (src / "bench--oci-model").iterdir() if p.is_file())
        subprocess.run([*VMM, "--root", str(src), "export", repo_id, str(work / "layout")], check=True)
        rows = []
        regs = [start_registry(work / f"reg-{i}") for i in range(2)]
        proxies = [FaultProxy(r.host).__enter__() for r in regs] if args.rate_mib else []
        for proxy in proxies:
            proxy.faults.rate = int(args.rate_mib * (1 << 20))
        hosts = [p.host for p in proxies] if proxies else [r.host for r in regs]
        try:
            t_sk_push = timed([skopeo, "copy", "-q", "--dest-tls-verify=false", f"oci:{work / 'layout'}",
                               f"docker://{hosts[0]}/bench/m:1"])
            t_vmm_push = timed([*VMM, "--root", str(src), "push", repo_id, f"{hosts[1]}/bench/m:1",
                                "--workers", str(args.workers)])
            t_sk_pull = timed([skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{hosts[1]}/bench/m:1",
                               f"oci:{work / 'skopeo-pulled'}"])
            t_vmm_pull = timed([*VMM, "--root", str(work / "dst"), "pull", f"oci://{hosts[1]}/bench/m:1",
                                "--workers", str(args.workers)])
        finally:
            for proxy in proxies:
                proxy.__exit__(None, None, None)
            for reg in regs:
                reg.stop()
        for what, sk, vm in (("push", t_sk_push, t_vmm_push), ("pull", t_sk_pull, t_vmm_pull)):
            rows.append((what, "skopeo copy", sk, total / sk / 1e6, 1.0))
            rows.append((what, "vmm", vm, total / vm / 1e6, sk / vm))
        link = f"capped at {args.rate_mib:g} MiB/s per connection (proxy)" if args.rate_mib else "uncapped loopback"
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        head = (f"### {stamp}: {total / (1 << 20):.0f} MiB in {args.shards} files, {link}, {platform.node() or 'host'}, "
                f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                f"{subprocess.run([skopeo, '--version'], capture_output=True, text=True).stdout.strip()}\n"
                f"`bench/oci.py --size-mib {args.size_mib} --shards {args.shards} --workers {args.workers}"
                + (f" --rate-mib {args.rate_mib:g}" if args.rate_mib else "") + "`\n\n"
                "| direction | client | seconds | MB/s | speed vs skopeo |\n| --- | --- | --- | --- | --- |\n")
        table = "".join(f"| {d} | {c} | {s:.2f} | {mb:.0f} | {r:.2f}x |\n" for d, c, s, mb, r in rows)
        print(head + table)
        if args.record:
            doc = REPO / "docs" / "benchmarks.md"
            text = doc.read_text()
            if "## OCI registry" not in text:
                text = text.rstrip("\n") + "\n\n## OCI registry\n\n" + SECTION_INTRO
            doc.write_text(text.rstrip("\n") + "\n\n" + head + table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


SECTION_INTRO = """`bench/oci.py`: a managed model of random shards, one fresh local `docker-registry` (distribution
2.8) per push, `skopeo copy` of vmm's own OCI layout next to `vmm push`, then `skopeo copy` to a layout
next to `vmm pull oci://` (which also installs the model and writes its manifest). Both verify sha256
digests. Same box, each run once; on 2 shared cores the registry, the client and (capped runs) the
proxy compete for CPU.
"""


if __name__ == "__main__":
    main()
