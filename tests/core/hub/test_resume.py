"""Fine-grained resume: a SIGKILL at any point loses at most a few MiB per connection, whatever
the chunk size (progress inside each chunk is recorded in the chunk map)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_vmm
from hubserver import HubServer

from vmm.core.hub import partial, transfer

MIB = 1024 * 1024
WORKERS = 2
# What one connection may lose to a SIGKILL: a read block not yet written, bytes written
# since the map was last saved, and what sat in the socket buffers.
LOSS_PER_CONNECTION = transfer.WRITE_BLOCK + partial.MAP_FLUSH_BYTES + MIB


def _on_disk(model: Path, sizes: dict[str, int]) -> int:
    """Bytes the next pull will not fetch again: finished files plus what the maps claim."""
    total = 0
    for name, size in sizes.items():
        if (model / name).is_file():
            total += size
            continue
        try:
            state = json.loads((model / ".vmm" / "partial" / f"{name}.part.json").read_text())
        except (OSError, ValueError):
            continue
        chunk = state["chunk_size"]
        total += sum(min(chunk, size - i * chunk) for i in state["done"])
        total += sum(state.get("written", {}).values())
    return total


def _kill_after(hub: HubServer, env: dict, served_target: int) -> None:
    child = subprocess.Popen([sys.executable, "-m", "vmm", "pull", "org/big", "--workers", str(WORKERS),
                              "--chunk-size", "32MiB"], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while hub.total_served() < served_target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_sigkill_at_random_points_loses_at_most_a_few_mib_per_connection(root, monkeypatch):
    rng = random.Random(1313)
    files = {"config.json": b"{}"}
    files.update({f"model-0000{i}-of-00004.safetensors": rng.randbytes(24 * MIB) for i in range(1, 5)})
    sizes = {name: len(data) for name, data in files.items()}
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add_repo("org/big", files)
        hub.faults.rate_bytes_per_s = 4 * MIB      # per connection: the kills land mid-chunk
        env = {**os.environ, "HF_ENDPOINT": hub.url, "VMM_ROOT": str(root)}
        model = root / "org--big"
        kills = 3
        for _ in range(kills):
            before_served, before_disk = hub.total_served(), _on_disk(model, sizes)
            _kill_after(hub, env, before_served + rng.randint(12 * MIB, 20 * MIB))
            served = hub.total_served() - before_served
            gained = _on_disk(model, sizes) - before_disk
            assert served > 11 * MIB, "the kill landed too early to tell"
            # A chunk-granular resume would lose all of it here (32 MiB chunks, 24 MiB files).
            assert served - gained <= WORKERS * LOSS_PER_CONNECTION, (served, gained)
        hub.faults.rate_bytes_per_s = None
        run = run_vmm("pull", "org/big", "--chunk-size", "32MiB", "--workers", str(WORKERS))
        assert run.exit_code == 0, run.stderr
        for name, data in files.items():
            assert (model / name).read_bytes() == data, name
        assert hub.total_served() <= sum(sizes.values()) + kills * WORKERS * LOSS_PER_CONNECTION
