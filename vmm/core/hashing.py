"""File hashes the Hub uses: sha256 (LFS files) and the git blob sha1 (every file).

Streamed with one large reusable buffer: hashlib releases the GIL on big updates, so
several files can hash in parallel threads; ``hashlib.sha256`` runs ~1.8 GB/s per core on
this box (SHA-NI), see docs/benchmarks.md.

Which hash proves a Hub file: ``expected_digest`` (sha256 for LFS files, whose git blob id is
the pointer's; the git blob sha1 for the others); ``hash_file``/``new_hasher`` compute it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BUFFER_BYTES = 8 << 20


def _stream(path: Path | str, hashers: list) -> int:
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            total += n
            for h in hashers:
                h.update(view[:n])
    return total


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's content (the Hub's ``lfs.sha256``)."""
    h = hashlib.sha256()
    _stream(path, [h])
    return h.hexdigest()


def git_blob_sha1_file(path: Path | str) -> str:
    """Hex git blob id: sha1(b"blob <size>\\0" + content) (the Hub's ``blob_id``/``oid``)."""
    size = os.stat(path).st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    n = _stream(path, [h])
    if n != size:   # changed while we read it
        raise OSError(f"{path} changed size while hashing")
    return h.hexdigest()


def file_hashes(path: Path | str) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) in one read of the file."""
    size = os.stat(path).st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    n = _stream(path, [sha256, sha1])
    if n != size:
        raise OSError(f"{path} changed size while hashing")
    return sha256.hexdigest(), sha1.hexdigest(), size


def expected_digest(f) -> tuple[str, str]:
    """(algorithm, hex digest) that proves a file listed with ``sha256``/``git_sha1``
    attributes: "sha256" for LFS files, else "git-sha1"; ("size", "") when neither is known."""
    if f.sha256:
        return "sha256", f.sha256.lower()
    if f.git_sha1:
        return "git-sha1", f.git_sha1.lower()
    return "size", ""


def new_hasher(algorithm: str, size: int):
    """A fresh hashlib object for ``algorithm`` over a ``size``-byte file (None for "size")."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "git-sha1":
        return hashlib.sha1(b"blob %d\0" % size)
    return None


def hash_file(path: Path | str, algorithm: str, size: int) -> str:
    """Hex digest of ``path`` under ``algorithm`` ("" for "size"); OSError if it changed size."""
    hasher = new_hasher(algorithm, size)
    if hasher is None:
        return ""
    if _stream(path, [hasher]) != size:
        raise OSError(f"{path} is not {size} bytes")
    return hasher.hexdigest()


def looks_like_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def looks_like_sha1(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)
