"""vmm dedup: identical files become hardlinks; nothing shared is ever damaged."""

from __future__ import annotations

import json
import os

from conftest import run_vmm
from storage_helpers import blob, make_model

from vmm.core.store import dedup, locking, manifests
from vmm.core import hashing

SHARD = blob("shared-shard", 300_000)
TOK = blob("tokenizer", 100_000)


def _two_models(root):
    a = make_model(root, "org/base", {"model.safetensors": SHARD, "tokenizer.json": TOK,
                                      "config.json": b'{"a": 1}'})
    b = make_model(root, "org/finetune", {"model.safetensors": blob("other"), "tokenizer.json": TOK,
                                          "extra/copy.safetensors": SHARD})
    return a, b


def test_dedup_links_identical_files_and_reports_bytes_saved(root):
    a, b = _two_models(root)
    run = run_vmm("dedup", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["bytes_saved"] == len(SHARD) + len(TOK)
    assert doc["linked"] == 2
    assert os.path.samefile(a / "model.safetensors", b / "extra/copy.safetensors")
    assert os.path.samefile(a / "tokenizer.json", b / "tokenizer.json")
    assert not os.path.samefile(a / "model.safetensors", b / "model.safetensors")
    # A second run finds nothing left to do.
    again = run_vmm("dedup", "--json").json()
    assert again["bytes_saved"] == 0 and again["groups"] == []
    # No temporary names left behind.
    assert not [p for p in b.rglob("*.tmp")]


def test_dedup_dry_run_changes_nothing(root):
    a, b = _two_models(root)
    before = {p: os.stat(p).st_ino for p in list(a.rglob("*")) + list(b.rglob("*")) if p.is_file()}
    run = run_vmm("dedup", "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert "would save" in run.stdout and str(len(SHARD) + len(TOK)) in run.stdout
    after = {p: os.stat(p).st_ino for p in before}
    assert before == after


def test_rm_of_one_deduped_model_leaves_the_other_intact(root):
    a, b = _two_models(root)
    assert run_vmm("dedup").exit_code == 0
    assert os.stat(b / "tokenizer.json").st_nlink == 2
    rm = run_vmm("rm", "org/base", "--yes")
    assert rm.exit_code == 0, rm.stderr
    assert not a.exists()
    manifest = manifests.read_manifest(b)
    for f in manifest.files:
        assert hashing.sha256_file(b / f.path) == f.sha256, f.path
    assert os.stat(b / "tokenizer.json").st_nlink == 1


def test_dedup_skips_locked_models(root):
    a, b = _two_models(root)
    with locking.model_lock(root, "org--finetune", "serve", shared=True):
        run = run_vmm("dedup", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["bytes_saved"] == 0
    assert "org--finetune" in run.stderr and "locked" in run.stderr
    assert not os.path.samefile(a / "tokenizer.json", b / "tokenizer.json")


def test_dedup_hashes_hand_made_dirs_and_never_spreads_a_damaged_copy(root):
    good = make_model(root, "org/good", {"w.bin": SHARD})
    hand = make_model(root, "hand-made", {"w.bin": SHARD}, managed=False)
    # A managed copy whose bytes no longer match its manifest (bit rot), first in the kept
    # copy's order: it is hashed, refused, and left for `vmm check` to report.
    bad = make_model(root, "a-org/rotten", {"w.bin": SHARD})
    with open(bad / "w.bin", "r+b") as handle:
        handle.write(b"XXXX")
    report = dedup.dedup(root)
    assert os.path.samefile(good / "w.bin", hand / "w.bin")
    assert not os.path.samefile(good / "w.bin", bad / "w.bin")
    assert (bad / "w.bin").read_bytes()[:4] == b"XXXX"
    assert any(s.name == "a-org--rotten" and "does not match" in s.reason for s in report.skipped)
    assert report.bytes_saved == len(SHARD)
    assert (good / "w.bin").read_bytes() == SHARD


def test_bytes_saved_is_zero_when_the_replaced_file_has_a_name_outside_the_root(root, tmp_path):
    a = make_model(root, "org/a", {"w.bin": SHARD})
    b = make_model(root, "org/b", {"w.bin": SHARD})
    os.link(b / "w.bin", tmp_path / "backup.bin")     # keeps b's inode alive
    report = dedup.dedup(root)
    assert report.linked == 1
    assert report.bytes_saved == 0
    assert os.path.samefile(a / "w.bin", b / "w.bin") or os.path.samefile(a / "w.bin", tmp_path / "backup.bin")


def test_find_verified_blob_rehashes_and_link_or_copy_is_atomic(root, tmp_path):
    a = make_model(root, "org/a", {"w.bin": SHARD})
    sha = hashing.sha256_file(a / "w.bin")
    found = dedup.find_verified_blob(root, sha, len(SHARD))
    assert found == a / "w.bin"
    assert dedup.find_verified_blob(root, "0" * 64, len(SHARD)) is None
    dst = tmp_path / "pulled" / "w.bin"
    assert dedup.link_or_copy(found, dst) == "link"
    assert os.path.samefile(found, dst)
    # A damaged file is not offered.
    with open(a / "w.bin", "r+b") as handle:
        handle.write(b"XXXX")
    assert dedup.find_verified_blob(root, sha, len(SHARD)) is None


def test_hashes_match_the_hub_definitions(tmp_path):
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    assert hashing.sha256_file(path) == hashlib.sha256(b"hello\n").hexdigest()
    # `git hash-object` of "hello\n".
    assert hashing.git_blob_sha1_file(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_dedup_on_an_empty_root_reports_nothing(root):
    run = run_vmm("dedup", "--json")
    assert run.exit_code == 0
    assert json.loads(run.stdout)["groups"] == []


def test_a_reader_never_sees_a_missing_or_half_file_while_dedup_replaces_it(root):
    import shutil
    import threading

    a, b = _two_models(root)
    target = b / "tokenizer.json"
    stop = threading.Event()
    problems: list[str] = []

    def reader():
        while not stop.is_set():
            try:
                if target.read_bytes() != TOK:
                    problems.append("content differs")
            except OSError as exc:
                problems.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            tmp = b / ".fresh-copy"
            shutil.copyfile(a / "tokenizer.json", tmp)
            os.replace(tmp, target)                  # a separate inode again
            assert dedup.dedup(root).linked >= 1
    finally:
        stop.set()
        thread.join()
    assert problems == []


def test_files_on_another_filesystem_are_skipped_and_reported(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(SHARD)
    second.write_bytes(SHARD)
    sha = hashing.sha256_file(first)
    st1, st2 = os.stat(first), os.stat(second)
    # The same content seen on two devices (a model dir that is a mount point elsewhere).
    entries = [dedup._Entry("org--a", "a.bin", first, st1.st_dev, st1.st_ino, 1, len(SHARD), sha),
               dedup._Entry("org--b", "b.bin", second, st1.st_dev + 1, st2.st_ino, 1, len(SHARD), sha)]
    planned = dedup.DedupPlan(dedup.DedupReport(root=str(tmp_path), dry_run=False))
    dedup._plan_groups(entries, planned)
    report = dedup.apply(planned)
    assert planned.links == [] and report.groups == []
    assert any("another filesystem" in s.reason for s in report.skipped)
    assert not os.path.samefile(first, second)


def test_link_or_copy_copies_across_filesystems(tmp_path):
    import pytest

    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        src = os.path.join(other, "w.bin")
        with open(src, "wb") as handle:
            handle.write(TOK)
        dst = tmp_path / "sub" / "w.bin"
        assert dedup.link_or_copy(src, dst) == "copy"
        assert dst.read_bytes() == TOK
        assert not [p for p in dst.parent.iterdir() if p.name != "w.bin"]
