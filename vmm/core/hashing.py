"""File hashes the Hub uses: sha256 (LFS files) and the git blob sha1 (every file).

Streamed with one large reusable buffer: hashlib releases the GIL on big updates, so
several files can hash in parallel threads; ``hashlib.sha256`` runs ~1.8 GB/s per core on
this box (SHA-NI), see FIELD-NOTES.md.
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


def looks_like_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def looks_like_sha1(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)
