"""Verified must mean verified: damage that keeps a file's size is found by `vmm check`
(exit 5) and repaired by `vmm pull` (exit 0, only the damaged file fetched again)."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
from builders import make_safetensors_model
from conftest import run_vmm

from vmm.core.store import manifests

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def _tiny_repo(tmp_path: Path) -> dict[str, bytes]:
    """A two-shard llama-like model whose tensor data is random (zeros would hide damage)."""
    src = make_safetensors_model(tmp_path / "src", shards=2, sparse=False)
    rng = random.Random(5)
    for shard in (SHARD1, SHARD2):
        path = src / shard
        raw = bytearray(path.read_bytes())
        start = 8 + struct.unpack("<Q", raw[:8])[0]
        raw[start:] = rng.randbytes(len(raw) - start)
        path.write_bytes(bytes(raw))
    return {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}


@pytest.fixture
def pulled(hub, root, tmp_path):
    files = _tiny_repo(tmp_path)
    hub.add_repo("org/tiny", files)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    hub.reset_counters()
    return files


def _keep_times(path: Path, damage) -> None:
    """Damage ``path`` and put its mtime back (only ctime, and maybe the inode, tell)."""
    st = path.stat()
    damage(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _bit_flip(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - 1000)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x10]))


def _zero_tail(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - 4096)
        handle.write(b"\0" * 4096)


def _truncate_and_extend(path: Path) -> None:
    size = path.stat().st_size
    os.truncate(path, size // 2)
    os.truncate(path, size)


def _replace_same_size(path: Path) -> None:
    other = path.with_name(path.name + ".other")
    other.write_bytes(random.Random(9).randbytes(path.stat().st_size))
    os.replace(other, path)


DAMAGE = {"bit flip": _bit_flip, "zeroed tail": _zero_tail,
          "truncated then re-extended": _truncate_and_extend, "replaced by another file": _replace_same_size}


def _integrity(run) -> dict:
    return next(c for c in json.loads(run.stdout)["checks"] if c["name"] == "integrity")


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest.mark.parametrize("keep_mtime", [False, True], ids=["", "mtime-put-back"])
def test_same_size_damage_is_reported_by_check_and_repaired_by_pull(hub, root, pulled, kind, keep_mtime):
    shard = root / "org--tiny" / SHARD2
    (_keep_times(shard, DAMAGE[kind]) if keep_mtime else DAMAGE[kind](shard))
    assert shard.stat().st_size == len(pulled[SHARD2]) and shard.read_bytes() != pulled[SHARD2]

    check = run_vmm("check", "org/tiny", "--json")
    assert check.exit_code == 5, check.stderr
    assert _integrity(check)["status"] == "fail" and SHARD2 in _integrity(check)["detail"]
    assert "vmm pull --verify org/tiny" in check.stderr

    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["verified"] is True and doc["repaired"] == [SHARD2]
    assert f"repairing {SHARD2}" in run.stderr
    # Only the damaged file crossed the wire again.
    assert hub.count(SHARD2) == len(pulled[SHARD2]) and hub.total_served() == len(pulled[SHARD2])
    assert shard.read_bytes() == pulled[SHARD2]
    assert (root / "org--tiny" / SHARD1).read_bytes() == pulled[SHARD1]
    after = run_vmm("check", "org/tiny", "--json")
    assert _integrity(after)["status"] == "pass", after.stdout


def test_the_manifest_records_each_files_identity_at_verification(hub, root, pulled):
    manifest = manifests.read_manifest(root / "org--tiny")
    for f in manifest.files:
        st = (root / "org--tiny" / f.path).stat()
        assert f.identity() == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev), f.path
        assert f.verified_at is not None


def _age_records(model_dir: Path, identity_from_disk: bool = False) -> None:
    """Pretend the last verification happened long after the files were written (so the
    records are not "racy"); with ``identity_from_disk`` also make the record match the
    file as it is now: bit rot that leaves every piece of metadata alone."""
    manifest = manifests.read_manifest(model_dir)
    for f in manifest.files:
        st = (model_dir / f.path).stat()
        if identity_from_disk:
            f.mtime_ns, f.ctime_ns, f.inode, f.device = st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev
        f.verified_at = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 + 60
    manifests.write_manifest(model_dir, manifest)


def test_unchanged_files_are_trusted_without_hashing_and_verify_hashes_all(hub, root, pulled):
    model = root / "org--tiny"
    _age_records(model)
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["hashed_files"] == 0 and run.json()["verified"] is True
    run = run_vmm("pull", "org/tiny", "--json", "--verify")
    assert run.exit_code == 0, run.stderr
    assert run.json()["hashed_files"] == run.json()["files"]


def test_only_verify_finds_damage_that_left_the_metadata_alone(hub, root, pulled):
    model = root / "org--tiny"
    _bit_flip(model / SHARD1)
    _age_records(model, identity_from_disk=True)       # bit rot: nothing on the inode changed
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0 and run.json()["repaired"] == []     # documented: only --verify sees it
    check = run_vmm("check", "org/tiny")
    assert check.exit_code == 5 and "`vmm pull --verify org/tiny`" in check.stderr   # the hint holds
    run = run_vmm("pull", "org/tiny", "--json", "--verify")
    assert run.exit_code == 0, run.stderr
    assert run.json()["repaired"] == [SHARD1]
    assert (model / SHARD1).read_bytes() == pulled[SHARD1]
    assert hub.total_served() == len(pulled[SHARD1])


def test_a_missing_file_is_fetched_again_and_reported_repaired(hub, root, pulled):
    (root / "org--tiny" / "config.json").unlink()
    run = run_vmm("pull", "org/tiny")
    assert run.exit_code == 0, run.stderr
    assert "repaired" in run.stdout and "config.json" in run.stdout
    assert (root / "org--tiny" / "config.json").read_bytes() == pulled["config.json"]


def test_offline_pull_hashes_changed_files_and_refuses_a_damaged_model(hub, root, pulled):
    from conftest import assert_error_line

    _keep_times(root / "org--tiny" / SHARD1, _bit_flip)
    assert_error_line(run_vmm("pull", "org/tiny", "--offline"), 4, "damaged", SHARD1, "sha256 mismatch")
    assert run_vmm("pull", "org/tiny").exit_code == 0
    assert run_vmm("pull", "org/tiny", "--offline").exit_code == 0
