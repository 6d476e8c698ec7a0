"""Which of a pull's files are on disk and verified: trust a file only while it is the file
whose hash was checked.

The manifest records, per file, what identified it on disk when its hash was last checked
(size, mtime_ns, ctime_ns, inode, device). A file whose identity is unchanged is trusted
without reading it; any other file is hashed again (so are all with ``rehash``, i.e.
``vmm pull --verify``: the only way to find damage that leaves the metadata alone, such as
bit rot under a filesystem without checksums).

Like git's "racily clean" index entries: a record is trusted only when the file's mtime and
ctime are older than the verification by ``RACY_S`` (timestamps are coarse, down to 2 s on
some filesystems: a write in the same tick as the check would leave them unchanged).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmm.core import hashing
from vmm.core.store import manifests


RACY_S = 2.0


@dataclass
class Verdict:
    path: str                      # the repo path
    ok: bool
    identity: tuple | None = None  # the identity the file had when it was verified (ok only)
    hashed: bool = False           # its hash was checked now
    problem: str | None = None     # why not ok: "missing", "size 10 != 12", "sha256 mismatch"


def identity_of(path: Path) -> tuple | None:
    try:
        return manifests.stat_identity(os.stat(path))
    except OSError:
        return None


def _trusted(record: manifests.ManifestFile, ident: tuple) -> bool:
    if record.identity() != ident or record.verified_at is None:
        return False
    return max(record.mtime_ns or 0, record.ctime_ns or 0) < (record.verified_at - RACY_S) * 1e9


def check(on_disk: Path, rf, record: manifests.ManifestFile | None, rehash: bool) -> Verdict:
    """Is ``on_disk`` the file ``rf`` (a RemoteFile or ManifestFile) describes?"""
    try:
        st = os.stat(on_disk)
    except FileNotFoundError:
        return Verdict(rf.path, False, problem="missing")
    except OSError as exc:
        return Verdict(rf.path, False, problem=f"unreadable ({exc.strerror or exc})")
    if not os.path.isfile(on_disk):
        return Verdict(rf.path, False, problem="not a regular file")
    if st.st_size != rf.size:
        return Verdict(rf.path, False, problem=f"size {st.st_size} != {rf.size}")
    ident = manifests.stat_identity(st)
    algorithm, expected = hashing.expected_digest(rf)
    if (not rehash and record is not None and _trusted(record, ident)
            and hashing.expected_digest(record) == (algorithm, expected)):
        return Verdict(rf.path, True, ident)
    if algorithm == "size":
        return Verdict(rf.path, True, ident)    # nothing known to hash against
    try:
        digest = hashing.hash_file(on_disk, algorithm, rf.size)
    except OSError as exc:
        return Verdict(rf.path, False, hashed=True, problem=f"unreadable ({exc.strerror or exc})")
    if identity_of(on_disk) != ident:
        return Verdict(rf.path, False, hashed=True, problem="changed while it was hashed")
    if digest != expected:
        return Verdict(rf.path, False, hashed=True, problem=f"{algorithm} mismatch")
    return Verdict(rf.path, True, ident, hashed=True)


def check_all(items: list[tuple[Path, object, manifests.ManifestFile | None]], rehash: bool,
              workers: int | None = None) -> list[Verdict]:
    """:func:`check` for each (on_disk, file, record), hashing files in parallel."""
    if not items:
        return []
    workers = workers or max(2, min(16, (os.cpu_count() or 2) * 2, len(items)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: check(item[0], item[1], item[2], rehash), items))


def with_identity(f: manifests.ManifestFile, identity: tuple | None, verified_at: float) -> manifests.ManifestFile:
    """``f`` with the identity its file had when verified (none recorded when unknown)."""
    if identity is None or identity[0] != f.size:
        return manifests.ManifestFile(f.path, f.size, f.sha256, f.git_sha1)
    _size, mtime_ns, ctime_ns, inode, device = identity
    return manifests.ManifestFile(f.path, f.size, f.sha256, f.git_sha1, mtime_ns, ctime_ns, inode, device,
                                  verified_at)
