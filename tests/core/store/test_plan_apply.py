"""gc and dedup as plan then apply: what was confirmed is what is removed, re-checked under the lock."""

from __future__ import annotations

import os
import shutil
import time

from conftest import run_vmm
from storage_helpers import blob, make_model, set_mtime

from vmm.core.store import dedup, gc, locking, manifests, paths

DAY = 86400.0


def _old(root, name, seed):
    return make_model(root, name, {"w.bin": blob(seed, 10_000)}, last_used=time.time() - 40 * DAY)


def test_a_model_pinned_between_plan_and_apply_is_not_removed(root):
    a, b = _old(root, "org/a", "a"), _old(root, "org/b", "b")
    planned = gc.plan(root, unused_for_s=30 * DAY)
    assert [m.name for m in planned.report.removed] == ["org/a", "org/b"]
    assert run_vmm("pin", "org/a").exit_code == 0
    report = gc.apply(planned)
    assert [m.name for m in report.removed] == ["org/b"]
    assert {s.name: s.reason for s in report.skipped} == {"org/a": "pinned since the plan"}
    assert a.exists() and not b.exists()
    assert report.dry_run is False and planned.report.dry_run is True


def test_a_hand_made_model_pinned_after_the_plan_is_kept(root):
    hand = make_model(root, "hand", {"w.bin": blob("h", 1000)}, managed=False)
    set_mtime(hand, time.time() - 40 * DAY)
    planned = gc.plan(root, unused_for_s=30 * DAY)
    assert [m.name for m in planned.report.removed] == ["hand"]
    gc.pin(root, "hand")
    assert gc.apply(planned).removed == [] and hand.exists()


def test_a_model_used_or_locked_since_the_plan_is_kept_and_nothing_else_is_added(root):
    a, b, c = _old(root, "org/a", "a"), _old(root, "org/b", "b"), _old(root, "org/c", "c")
    planned = gc.plan(root, keep_under_bytes=15_000)    # two of three must go: a then b
    assert [m.name for m in planned.report.removed] == ["org/a", "org/b"]
    manifests.touch_usage(a, "inspect")                  # used since: the manifest changed
    with locking.model_lock(root, "org--b", "serve", shared=True):
        report = gc.apply(planned)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["org/a"].startswith("changed since the plan") and "locked" in reasons["org/b"]
    # c was not in the confirmed list: it stays although the root is still over the limit.
    assert report.removed == [] and report.fits is False
    assert a.exists() and b.exists() and c.exists()


def test_gc_keeps_partials_whose_pull_started_after_the_plan(root):
    a = make_model(root, "org/a", {"w.bin": b"x"})
    part = paths.partial_dir(a) / "w.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"p" * 100)
    set_mtime(part, time.time() - 3 * DAY)
    planned = gc.plan(root, partials_older_than_s=DAY)
    assert [p.path for p in planned.report.partials] == [str(part)]
    with locking.model_lock(root, "org--a", "pull"):
        report = gc.apply(planned)
    assert report.partials == [] and part.exists()
    assert any("locked" in s.reason for s in report.skipped)
    # Written since the plan (a pull resumed and finished its lock): kept as well.
    os.utime(part)
    report = gc.apply(planned)
    assert report.partials == [] and part.exists()
    assert any("written since the plan" in s.reason for s in report.skipped)
    assert gc.apply(gc.plan(root, partials_older_than_s=0)).partials[0].path == str(part)
    assert not part.exists()


def test_dedup_links_only_files_unchanged_since_the_plan(root):
    shared = blob("shared", 100_000)
    a = make_model(root, "org/a", {"w.bin": shared, "t.bin": blob("t", 70_000)})
    b = make_model(root, "org/b", {"w.bin": shared, "t.bin": blob("t", 70_000)})
    planned = dedup.plan(root)
    assert planned.report.linked == 2 and planned.report.dry_run
    # b/t.bin replaced by another file of the same content after the plan.
    tmp = b / "t.copy"
    shutil.copyfile(b / "t.bin", tmp)
    os.replace(tmp, b / "t.bin")
    report = dedup.apply(planned)
    assert report.linked == 1 and not report.dry_run
    assert os.path.samefile(a / "w.bin", b / "w.bin")
    assert not os.path.samefile(a / "t.bin", b / "t.bin")
    assert any("changed since the plan" in s.reason for s in report.skipped)


def test_dedup_skips_a_model_locked_after_the_plan(root):
    shared = blob("shared", 100_000)
    a = make_model(root, "org/a", {"w.bin": shared})
    b = make_model(root, "org/b", {"w.bin": shared})
    planned = dedup.plan(root)
    with locking.model_lock(root, "org--b", "serve", shared=True):
        report = dedup.apply(planned)
    assert report.linked == 0 and not os.path.samefile(a / "w.bin", b / "w.bin")
    assert any(s.name == "org--b" and "locked" in s.reason for s in report.skipped)


def test_gc_cli_removes_the_planned_list(root):
    _old(root, "org/a", "a")
    run = run_vmm("gc", "--unused-for", "30d", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert [m["name"] for m in doc["removed"]] == ["org/a"] and doc["dry_run"] is False
