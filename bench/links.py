"""Benchmark: `vmm pull` vs `hf download` on a link that misbehaves like real ones do.

One local Hub server (tests/hubserver.py, in this process) that signs its CDN URLs like
huggingface.co (docs/pull.md), a repo of a few shards (generated into bench/out/ like
bench/pull.py), a per-connection rate cap, and one fault scenario per run:

- ``resets``: some responses are cut mid-body by a TCP RST, URLs valid;
- ``cuts``: the control: some responses end early (a clean close: a short body), URLs valid;
- ``expiry+cuts``: signed URLs live ``--ttl`` seconds (the Hub's live about an hour: scale
  the rate down and the pull is hours long) and some responses are cut mid-body after the
  URL has expired (clean closes): resuming needs a fresh URL;
- ``stall``: some responses stop sending mid-body, the connection left open (two minutes);
- ``no-range``: the server ignores Range (200 with the whole file) and cuts some responses
  (clean closes).

Reported per client: exit code, seconds, MiB the server sent, and whether every file's
sha256 matches. Each client is run with a time limit (``--limit``).

    .venv/bin/python bench/links.py [--size-mib 256] [--shards 4] [--rate-mib 4] [--ttl 1]
                                    [--scenarios resets,cuts,expiry+cuts,stall,no-range] [--record]

``--record`` appends the results to docs/benchmarks.md under "## pull".
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
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
CUT_AFTER = 8 * MIB


def scenario(hub: HubServer, name: str, args) -> None:
    hub.faults.clear()
    hub.signed_url_ttl_s = 3600.0
    hub.faults.rate_bytes_per_s = args.rate_mib * MIB
    if name == "resets":
        hub.faults.add("reset", path="*.safetensors", where="cdn", after_bytes=CUT_AFTER, times=args.faults)
    elif name == "cuts":
        hub.faults.add("reset", path="*.safetensors", where="cdn", after_bytes=CUT_AFTER, times=args.faults,
                       rst=False)
    elif name == "expiry+cuts":
        hub.signed_url_ttl_s = args.ttl
        hub.faults.add("reset", path="*.safetensors", where="cdn", after_bytes=CUT_AFTER, times=args.faults,
                       rst=False)
    elif name == "stall":
        hub.faults.add("stall", path="*.safetensors", where="cdn", after_bytes=CUT_AFTER, seconds=120,
                       times=args.faults)
    elif name == "no-range":
        hub.faults.add("ignore_range", times=None)
        hub.faults.add("reset", path="*.safetensors", where="cdn", after_bytes=CUT_AFTER, times=args.faults,
                       rst=False)
    else:
        raise SystemExit(f"unknown scenario {name!r}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def run_client(hub: HubServer, client: str, env: dict, args, expected: dict[str, str]) -> dict:
    dest = OUT / f"links-{client.replace(' ', '-')}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(OUT / "hf-home", ignore_errors=True)
    hub.reset_counters()
    began = time.monotonic()
    try:
        proc = subprocess.run(client_command(client, dest, args.workers, args.chunk_size), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=args.limit)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = "timeout", (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
    elapsed = time.monotonic() - began
    files = dest / "bench--model" if client == "vmm pull" else dest
    ok = all((files / name).is_file() and sha256_of(files / name) == digest for name, digest in expected.items())
    # The last line that says something (hf ends with a "Hint: set HF_DEBUG=1" line).
    last = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Hint:")][-1:] if code != 0 else []
    shutil.rmtree(dest, ignore_errors=True)
    return {"client": client, "code": code, "seconds": elapsed, "served": hub.total_served(), "ok": ok,
            "last": last[0][:160] if last else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=4.0, help="per-connection cap")
    parser.add_argument("--ttl", type=float, default=1.0, help="signed URL lifetime in expiry+cuts")
    parser.add_argument("--faults", type=int, default=4, help="responses cut or stalled per run")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--chunk-size", default="16MiB")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds before a client is stopped")
    parser.add_argument("--scenarios", default="resets,cuts,expiry+cuts,stall,no-range")
    parser.add_argument("--clients", default="vmm pull,hf download")
    parser.add_argument("--record", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    repo = make_repo(args.size_mib, args.shards)
    expected = {p.name: sha256_of(p) for p in repo.iterdir() if not p.name.startswith(".")}
    total = sum(p.stat().st_size for p in repo.iterdir() if not p.name.startswith("."))
    rows = []
    with HubServer() as hub:
        hub.add_repo("bench/model", repo)
        env = client_env(hub.url)
        for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            for client in [c.strip() for c in args.clients.split(",") if c.strip()]:
                scenario(hub, name, args)
                row = {"scenario": name, **run_client(hub, client, env, args, expected)}
                rows.append(row)
                print(f"  {name:<12} {client:<12} exit {row['code']!s:<8} {row['seconds']:7.1f} s "
                      f"{row['served'] / MIB:8.1f} MiB served  hashes {'ok' if row['ok'] else 'WRONG/MISSING'}"
                      f"  {row['last']}", flush=True)
    if args.record:
        record(rows, total, args)
    return 0


def record(rows: list[dict], total: int, args) -> None:
    lines = [f"\n### links, {stamp()}: {total / 2**30:.2f} GiB in {args.shards} shards, {machine()}",
             f"`bench/links.py --rate-mib {args.rate_mib:g} --ttl {args.ttl:g} --faults {args.faults} "
             f"--workers {args.workers} --chunk-size {args.chunk_size}` (resets, cuts and stalls "
             f"after {CUT_AFTER // MIB} MiB of a response; a stall lasts 120 s)\n",
             "| scenario | client | exit | seconds | MiB served | every sha256 right | last line |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        last = f"`{r['last']}`".replace("|", "\\|") if r["last"] else ""
        lines.append(f"| {r['scenario']} | {r['client']} | {r['code']} | {r['seconds']:.1f} | "
                     f"{r['served'] / MIB:.1f} | {'yes' if r['ok'] else 'no'} | {last} |")
    record_in_pull_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
