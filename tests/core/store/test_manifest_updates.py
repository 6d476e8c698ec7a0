"""No lost manifest updates: usage bookkeeping (inspect, serve) never undoes a pull's write."""

from __future__ import annotations

import subprocess
import sys
import threading

from conftest import REPO, run_vmm, run_vmm_subprocess
from storage_helpers import blob, make_model

from vmm.core.store import manifests, paths

# Usage bookkeeping exactly as `vmm inspect` and `vmm serve` do it, as fast as it can go,
# in another process (the race is between processes), until the stop file appears.
_TOUCH_LOOP = """
import os, sys
from pathlib import Path
from vmm.core.store import manifests
model, stop = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
while not stop.exists():
    manifests.touch_usage(model, "inspect")
    n += 1
print(n)
"""


def _revision(i: int) -> dict[str, bytes]:
    return {"config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
            "tokenizer.json": b'{"version": "%d"}' % i,
            f"model-{i}.safetensors": blob(f"rev{i}", 400_000)}


def test_usage_bookkeeping_during_pulls_never_loses_the_pulls_manifest(hub, root, tmp_path):
    hub.add_repo("org/tiny", _revision(0))
    assert run_vmm("pull", "org/tiny").exit_code == 0
    model = root / "org--tiny"
    for i in range(1, 5):
        commit = hub.add_repo("org/tiny", _revision(i))          # main moves on
        stop = tmp_path / f"stop-{i}"
        toucher = subprocess.Popen([sys.executable, "-c", _TOUCH_LOOP, str(model), str(stop)],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
        inspects: list[int] = []
        runner = threading.Thread(target=lambda: inspects.extend(
            run_vmm_subprocess("inspect", "org/tiny", "--json").returncode for _ in range(2)))
        runner.start()
        try:
            run = run_vmm("pull", "org/tiny")
        finally:
            runner.join()
            stop.touch()
            touches = int(toucher.communicate(timeout=60)[0])
        assert run.exit_code == 0, run.stderr
        assert touches > 0 and inspects
        manifest = manifests.read_manifest(model)
        assert manifest.commit == commit, f"round {i}: the pull's manifest was overwritten"
        pulled = {f.path for f in manifest.files}
        assert set(_revision(i)) <= pulled and f"model-{i - 1}.safetensors" not in pulled
        assert manifest.use_counts.get("inspect", 0) > 0


def test_update_is_the_one_read_modify_write_and_serialises_writers(root):
    model = make_model(root, "org/m", {"w.bin": b"x"})

    def bump():
        for _ in range(200):
            manifests.touch_usage(model, "serve")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert manifests.read_manifest(model).use_counts["serve"] == 800
    assert paths.manifest_lock_path(model).exists()
    # fn returning None writes nothing; a missing manifest is None.
    before = paths.manifest_path(model).stat().st_mtime_ns
    assert manifests.update(model, lambda m: None) is None
    assert paths.manifest_path(model).stat().st_mtime_ns == before
    assert manifests.update(root / "nothing", lambda m: m) is None


def test_write_manifest_can_carry_uses_recorded_meanwhile(root):
    model = make_model(root, "org/m", {"w.bin": b"x"})
    stale = manifests.read_manifest(model)                 # a pull's read at its start
    manifests.touch_usage(model, "serve")
    stale.commit = "b" * 40
    manifests.write_manifest(model, stale, carry_usage=True)
    now = manifests.read_manifest(model)
    assert now.commit == "b" * 40 and now.use_counts == {"serve": 1} and now.last_used


def test_usage_is_recorded_while_serve_holds_the_models_shared_lock(root):
    from vmm.core.store import locking

    model = make_model(root, "org/m", {"w.bin": b"x"})
    with locking.model_lock(root, "org--m", "serve", shared=True):
        manifests.touch_usage(model, "serve")
    assert manifests.read_manifest(model).use_counts == {"serve": 1}


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_recording_a_use_of_a_hand_made_model_writes_nothing_into_it(root):
    """Usage is recorded in a managed model's manifest; a hand-made folder (no manifest) is left
    exactly as it was, and the same call on a managed copy does write (so the check can fail)."""
    hand = make_model(root, "hand", {"w.bin": b"x"}, managed=False)
    managed = make_model(root, "org/m", {"w.bin": b"x"})
    before = _tree(hand)
    manifests.touch_usage(hand, "inspect")
    manifests.touch_usage(managed, "inspect")
    assert _tree(hand) == before and not (hand / paths.META_DIR).exists()
    assert manifests.read_manifest(managed).use_counts == {"inspect": 1}
