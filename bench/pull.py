"""Benchmark: `hf download` vs `vmm pull` (verification included) vs hf_transfer called directly.

One local Hub server (tests/hubserver.py, run as a subprocess), one repo of a few shards
(~2 GiB by default, generated once into bench/out/, git-ignored), the same machine, each
client run once per link mode:

- ``capped``: the server caps every connection at --rate bytes/s (default 100 MiB/s), like a
  CDN stream does; this is where parallel transfer pays.
- ``uncapped``: loopback at full speed (on a small box every client is CPU-bound here).

    .venv/bin/python bench/pull.py [--size-mib 2048] [--rate-mib 100] [--modes capped,uncapped]
                                   [--workers 8] [--chunk-size 16MiB] [--record]

``--record`` appends the results to docs/benchmarks.md under "## pull".
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
PY = sys.executable


def make_repo(size_mib: int, shards: int) -> Path:
    repo = OUT / f"repo-{size_mib}m-{shards}"
    marker = repo.with_name(repo.name + ".done")
    if marker.exists():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    block = os.urandom(16 << 20)
    per = (size_mib << 20) // shards
    for i in range(shards):
        with open(repo / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as handle:
            written = 0
            n = 0
            while written < per:
                piece = (n.to_bytes(8, "little") + bytes([i])) + block[9:]
                piece = piece[: per - written]
                handle.write(piece)
                written += len(piece)
                n += 1
    (repo / "config.json").write_text('{"model_type": "llama"}\n')
    marker.write_text("")
    return repo


def start_server(repo: Path, rate: float | None) -> tuple[subprocess.Popen, str]:
    args = [PY, str(REPO / "tests" / "hubserver.py"), "--repo", f"bench/model={repo}", "--port", "0"]
    if rate:
        args += ["--rate", str(rate)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    # Warm the server's hash cache (it lists sha256 per file) outside the timings.
    import urllib.request

    urllib.request.urlopen(f"{url}/api/models/bench/model/revision/main?blobs=true", timeout=300).read()
    return proc, url


def timed(cmd: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return elapsed


def client_env(url: str) -> dict[str, str]:
    """The environment every client runs with: the local Hub, no token, a scratch HF home."""
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(OUT / "hf-home"), "NO_COLOR": "1"}
    env.pop("HF_TOKEN", None)
    return env


def client_command(client: str, dest: Path, workers: int, chunk: str) -> list[str]:
    """``hf download`` into ``dest``, or ``vmm pull`` with ``dest`` as its root."""
    if client == "hf download":
        return [str(Path(PY).with_name("hf")), "download", "bench/model", "--local-dir", str(dest)]
    return [PY, "-m", "vmm", "pull", "bench/model", "--root", str(dest), "--workers", str(workers),
            "--chunk-size", chunk]


def run_mode(repo: Path, total: int, rate: float | None, workers: int, chunk: str,
             clients: list[str]) -> dict[str, float]:
    server, url = start_server(repo, rate)
    env = client_env(url)
    results: dict[str, float] = {}
    files = sorted(p.name for p in repo.iterdir() if not p.name.startswith("."))
    try:
        for client in clients:
            dest = OUT / f"dest-{client}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(OUT / "hf-home", ignore_errors=True)
            if client in ("hf download", "vmm pull"):
                cmd = client_command(client, dest, workers, chunk)
            else:  # hf_transfer direct, one file after another, as huggingface_hub 0.x drove it
                code = ("import sys, hf_transfer\n"
                        "url, dest, files = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
                        "import os; os.makedirs(dest, exist_ok=True)\n"
                        "for f in files:\n"
                        "    hf_transfer.download(url=f'{url}/bench/model/resolve/main/{f}', "
                        "filename=os.path.join(dest, f), max_files=%d, chunk_size=10485760)\n" % workers)
                cmd = [PY, "-c", code, url, str(dest), *files]
            elapsed = timed(cmd, env)
            results[client] = elapsed
            shutil.rmtree(dest, ignore_errors=True)
            print(f"  {client:<22} {elapsed:7.2f} s  {total / elapsed / 1e6:8.1f} MB/s", flush=True)
    finally:
        server.terminate()
        server.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=100.0, help="per-connection cap in capped mode")
    parser.add_argument("--modes", default="capped,uncapped")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--chunk-size", default="16MiB")
    parser.add_argument("--clients", default="hf download,vmm pull,hf_transfer direct")
    parser.add_argument("--record", action="store_true", help="append results to docs/benchmarks.md")
    args = parser.parse_args()
    repo = make_repo(args.size_mib, args.shards)
    total = sum(p.stat().st_size for p in repo.iterdir() if not p.name.startswith("."))
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    table = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        rate = args.rate_mib * (1 << 20) if mode == "capped" else None
        print(f"{mode} ({'%.0f MiB/s per connection' % args.rate_mib if rate else 'loopback'}), "
              f"{total / 2**30:.2f} GiB, workers {args.workers}, chunk {args.chunk_size}:", flush=True)
        results = run_mode(repo, total, rate, args.workers, args.chunk_size, clients)
        base = results.get("hf download")
        for client, elapsed in results.items():
            ratio = f"{base / elapsed:.2f}x" if base else "-"
            table.append((mode, client, elapsed, total / elapsed / 1e6, ratio))
        if base and "vmm pull" in results:
            print(f"  vmm pull vs hf download: {base / results['vmm pull']:.2f}x", flush=True)
    if args.record:
        record(table, total, args)
    return 0


def record(table, total: int, args) -> None:
    lines = [f"\n### {stamp()}: {total / 2**30:.2f} GiB in {args.shards} shards, {machine()}",
             f"`bench/pull.py --workers {args.workers} --chunk-size {args.chunk_size} --rate-mib {args.rate_mib:g}`"
             " (vmm pull includes sha256 verification; hf download checks sizes only; hf_transfer checks nothing)\n",
             "| link | client | seconds | MB/s | vs hf download |", "| --- | --- | --- | --- | --- |"]
    for mode, client, elapsed, mbs, ratio in table:
        lines.append(f"| {mode} | {client} | {elapsed:.2f} | {mbs:.0f} | {ratio} |")
    record_in_pull_section("\n".join(lines) + "\n")


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    return f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def record_in_pull_section(block: str) -> None:
    """Append ``block`` at the end of docs/benchmarks.md's "## pull" section (bench/pull.py,
    resume.py and links.py all record there)."""
    path = REPO / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## pull" not in text:
        text = text.rstrip("\n") + "\n\n## pull\n\nHow to read: see bench/pull.py's docstring.\n"
    head, _, tail = text.partition("## pull")
    # Insert at the end of the pull section (before the next "## " heading).
    body, sep, rest = tail.partition("\n## ")
    path.write_text(head + "## pull" + body.rstrip("\n") + "\n" + block + (("\n## " + rest) if sep else ""))
    print(f"recorded in {path}")


if __name__ == "__main__":
    sys.exit(main())
