"""vmm gc / pin: LRU order, quotas, pins and locks, stale partials, honest byte counts."""

from __future__ import annotations

import time

import pytest
from conftest import assert_error_line, run_vmm, run_vmm_subprocess
from storage_helpers import blob, make_model, set_mtime

from vmm.core.store import dedup, gc, locking, manifests, paths

DAY = 86400.0


def _aged_root(root):
    now = time.time()
    old = make_model(root, "org/old", {"w.bin": blob("old", 100_000)}, last_used=now - 40 * DAY)
    mid = make_model(root, "org/mid", {"w.bin": blob("mid", 100_000)}, last_used=now - 10 * DAY)
    new = make_model(root, "org/new", {"w.bin": blob("new", 100_000)}, last_used=now - 60)
    # Never used through vmm: the pull time counts.
    pulled = make_model(root, "org/pulled", {"w.bin": blob("pulled", 100_000)}, pulled_at=now - 20 * DAY)
    # Hand-made: the directory's mtime counts.
    hand = make_model(root, "hand-made", {"w.bin": blob("hand", 100_000)}, managed=False)
    set_mtime(hand, now - 30 * DAY)
    return old, mid, new, pulled, hand


def test_gc_keep_under_removes_least_recently_used_first(root):
    old, mid, new, pulled, hand = _aged_root(root)
    run = run_vmm("gc", "--keep-under", "250000B", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert [m["name"] for m in doc["removed"]] == ["org/old", "hand-made", "org/pulled"]
    assert [m["last_used_source"] for m in doc["removed"]] == ["last_used", "mtime", "pulled_at"]
    assert doc["fits"] is True and doc["root_bytes_after"] <= 250_000
    assert not old.exists() and not hand.exists() and not pulled.exists()
    assert mid.exists() and new.exists()
    assert doc["bytes_freed"] >= 300_000


def test_gc_unused_for_removes_only_models_older_than_the_duration(root):
    old, mid, new, pulled, hand = _aged_root(root)
    run = run_vmm("gc", "--unused-for", "15d", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    assert sorted(m["name"] for m in run.json()["removed"]) == ["hand-made", "org/old", "org/pulled"]
    assert mid.exists() and new.exists()


def test_gc_never_removes_pinned_or_locked_models(root):
    old, mid, new, pulled, hand = _aged_root(root)
    assert run_vmm("pin", "org/old").exit_code == 0
    assert run_vmm("pin", "hand-made").exit_code == 0
    assert paths.pin_path(root, "hand-made").exists() and manifests.read_manifest(old).pinned
    with locking.model_lock(root, "org--pulled", "serve", shared=True):
        run = run_vmm("gc", "--keep-under", "0", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert sorted(m["name"] for m in doc["removed"]) == ["org/mid", "org/new"]
    assert doc["fits"] is False
    reasons = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert reasons["org/old"] == "pinned" and reasons["hand-made"] == "pinned"
    assert "locked" in reasons["org/pulled"]
    assert old.exists() and hand.exists() and pulled.exists()
    assert "warning" in run.stderr
    # Unpinned, it goes.
    assert run_vmm("unpin", "org/old").exit_code == 0
    assert not manifests.read_manifest(old).pinned
    again = run_vmm("gc", "--unused-for", "1d", "--yes", "--json").json()
    assert sorted(m["name"] for m in again["removed"]) == ["org/old", "org/pulled"]
    assert hand.exists()


def test_gc_dry_run_lists_and_removes_nothing(root):
    models = _aged_root(root)
    run = run_vmm("gc", "--unused-for", "15d", "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert "would remove org/old" in run.stdout and "would remove org/pulled" in run.stdout
    assert "org/new" not in run.stdout
    assert all(m.exists() for m in models)


def test_gc_without_a_terminal_needs_yes(root):
    models = _aged_root(root)
    proc = run_vmm_subprocess("gc", "--unused-for", "1d", env={"VMM_ROOT": str(root)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: refusing to remove models without confirmation")
    assert all(m.exists() for m in models)


@pytest.mark.parametrize("args, fragment", [
    (["--keep-under", "lots"], "malformed size"),
    (["--unused-for", "30 days"], "malformed duration"),
    (["--partials-older-than", "-1h"], "malformed duration"),
])
def test_gc_bad_sizes_and_durations_exit_2(root, args, fragment):
    assert_error_line(run_vmm("gc", *args, "--dry-run"), 2, fragment)


def test_size_and_duration_parsing():
    assert gc.parse_size("500GB") == 500 * 10**9
    assert gc.parse_size("1.5TiB") == int(1.5 * 2**40)
    assert gc.parse_size("800M") == 800 * 2**20
    assert gc.parse_size("1024") == 1024
    assert gc.parse_duration("30d") == 30 * DAY
    assert gc.parse_duration("12h") == 12 * 3600
    assert gc.parse_duration("2w") == 14 * DAY


def test_gc_removes_stale_partials_and_keeps_fresh_ones_and_those_of_a_pull_in_progress(root):
    now = time.time()
    a = make_model(root, "org/a", {"w.bin": b"x"})
    b = make_model(root, "org/b", {"w.bin": b"x"})
    stale = paths.partial_dir(a) / "model.safetensors.part"
    fresh = paths.partial_dir(a) / "tokenizer.json.part"
    pulling = paths.partial_dir(b) / "model.safetensors.part"
    for path, age in ((stale, 3 * DAY), (fresh, 60), (pulling, 3 * DAY)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"p" * 5000)
        set_mtime(path, now - age)
    with locking.model_lock(root, "org--b", "pull"):
        run = run_vmm("gc", "--partials-older-than", "1d", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert [p["path"] for p in doc["partials"]] == [str(stale)]
    assert doc["bytes_freed"] == 5000 and doc["removed"] == []
    assert not stale.exists() and fresh.exists() and pulling.exists()


def test_gc_counts_hardlinked_bytes_only_when_the_last_name_goes(root):
    now = time.time()
    shared = blob("shared", 200_000)
    a = make_model(root, "org/a", {"w.bin": shared, "own.bin": blob("a-own", 10_000)}, last_used=now - 30 * DAY)
    b = make_model(root, "org/b", {"w.bin": shared}, last_used=now - 20 * DAY)
    make_model(root, "org/c", {"x.bin": blob("c", 10_000)}, last_used=now)
    assert dedup.dedup(root, min_size_bytes=1).bytes_saved == len(shared)
    report = gc.gc(root, unused_for_s=25 * DAY)
    assert [m.name for m in report.removed] == ["org/a"]
    freed = report.removed[0].bytes_freed
    assert 10_000 <= freed < 10_000 + len(shared)     # own file (+ manifest), not the shared one
    assert (b / "w.bin").read_bytes() == shared
    report = gc.gc(root, unused_for_s=15 * DAY)
    assert [m.name for m in report.removed] == ["org/b"]
    assert report.removed[0].bytes_freed >= len(shared)


def test_pin_of_a_missing_model_exits_3(root):
    assert_error_line(run_vmm("pin", "org/nothing"), 3, "org/nothing")
    assert_error_line(run_vmm("pin", "../etc"), 2)


def test_gc_removes_the_staging_dir_of_an_import_that_died(root):
    staging = root / ".org--x.import-4242"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "w.bin").write_bytes(b"w" * 1000)
    set_mtime(staging, time.time() - 2 * DAY)
    fresh = root / ".org--y.import-4243"
    fresh.mkdir()
    run = run_vmm("gc", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    assert [p["path"] for p in run.json()["partials"]] == [str(staging)]
    assert not staging.exists() and fresh.exists()
