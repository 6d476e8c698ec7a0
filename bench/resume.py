"""Benchmark: bytes fetched again after SIGKILLs at random points of a pull.

One local Hub server (tests/hubserver.py, in this process, per-connection rate cap so that
kills land mid-chunk), one repo of a few shards (generated into bench/out/ like
bench/pull.py). For each client: start a pull, SIGKILL it once the server has sent a random
amount (seeded), repeat ``--kills`` times, then let a last run finish uncapped. Reported:
bytes the server sent in total minus the repo's size, i.e. what the kills cost.

Clients: ``vmm pull`` (this checkout: progress inside each chunk is kept), ``vmm pull
(before)`` (a checkout given with --before, e.g. one whose resume keeps whole chunks only),
``hf download`` (huggingface_hub's resume of ``.incomplete`` files).

    .venv/bin/python bench/resume.py [--size-mib 512] [--shards 4] [--kills 4]
                                     [--rate-mib 20] [--before /path/to/old/checkout] [--record]

``--record`` appends the results to docs/benchmarks.md under "## pull".
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from hubserver import HubServer  # noqa: E402
from pull import OUT, client_command, client_env, machine, make_repo, record_in_pull_section, stamp  # noqa: E402

MIB = 1 << 20


def run_client(hub: HubServer, client: str, env: dict, cwd: Path, args, rng: random.Random,
               total: int) -> dict:
    dest = OUT / f"resume-{client.replace(' ', '-')}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(OUT / "hf-home", ignore_errors=True)
    cmd = client_command(client, dest, args.workers, args.chunk_size)
    hub.reset_counters()
    hub.faults.rate_bytes_per_s = args.rate_mib * MIB
    kills = 0
    for _ in range(args.kills):
        target = hub.total_served() + rng.randint(total // (3 * args.kills), total // (2 * args.kills))
        child = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while hub.total_served() < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if child.poll() is None:
            kills += 1
        child.send_signal(signal.SIGKILL)
        child.wait()
    hub.faults.rate_bytes_per_s = None
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{client} failed ({proc.returncode}): {proc.stderr[-500:]}")
    served = hub.total_served()
    shutil.rmtree(dest, ignore_errors=True)
    return {"client": client, "kills": kills, "served": served, "refetched": served - total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=20.0, help="per-connection cap while killing")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--chunk-size", default="16MiB")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--before", type=Path, default=None, help="another vmm checkout to compare")
    parser.add_argument("--clients", default="vmm pull,vmm pull (before),hf download")
    parser.add_argument("--record", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    repo = make_repo(args.size_mib, args.shards)
    total = sum(p.stat().st_size for p in repo.iterdir() if not p.name.startswith("."))
    rows = []
    with HubServer() as hub:
        hub.add_repo("bench/model", repo)
        env = client_env(hub.url)
        for client in [c.strip() for c in args.clients.split(",") if c.strip()]:
            run_env, cwd = dict(env), REPO
            if client == "vmm pull (before)":
                if args.before is None:
                    continue
                # `python -m` looks in the working directory first: run from the other checkout.
                run_env["PYTHONPATH"], cwd = str(args.before), args.before
            row = run_client(hub, client, run_env, cwd, args, random.Random(args.seed), total)
            rows.append(row)
            print(f"  {client:<20} {row['kills']} kills: {row['refetched'] / MIB:8.1f} MiB fetched again "
                  f"({row['refetched'] / MIB / max(1, row['kills']):.1f} MiB per kill)", flush=True)
    if args.record:
        record(rows, total, args)
    return 0


def record(rows: list[dict], total: int, args) -> None:
    lines = [f"\n### resume, {stamp()}: {total / 2**30:.2f} GiB in {args.shards} shards, {machine()}",
             f"`bench/resume.py --kills {args.kills} --rate-mib {args.rate_mib:g} --workers {args.workers} "
             f"--chunk-size {args.chunk_size} --seed {args.seed}` (SIGKILL once the server has sent a random "
             "amount; then one uncapped run to the end)\n",
             "| client | kills | MiB fetched again | per kill | per kill and connection |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        per_kill = r["refetched"] / MIB / max(1, r["kills"])
        per_conn = f"{per_kill / args.workers:.1f}" if r["client"].startswith("vmm") else "-"
        lines.append(f"| {r['client']} | {r['kills']} | {r['refetched'] / MIB:.1f} | {per_kill:.1f} | {per_conn} |")
    record_in_pull_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
