"""Helpers for the storage tests: models with real (non-sparse) content and hashed manifests,
and a fake Hugging Face cache entry laid out as huggingface_hub writes it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from vmm.core import hashing
from vmm.core.store import manifests

COMMIT = "a" * 40


def blob(seed: str, size: int = 200_000) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, distinct per seed)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_model(root: Path, repo_id: str, files: dict[str, bytes], managed: bool = True,
               hashes: bool = True, last_used: float | None = None, pulled_at: float | None = None,
               pinned: bool = False) -> Path:
    model_dir = Path(root) / repo_id.replace("/", "--")
    for rel, content in files.items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if managed:
        entries = []
        for rel in sorted(files):
            sha256, sha1, size = hashing.file_hashes(model_dir / rel)
            entries.append(manifests.ManifestFile(rel, size, sha256 if hashes else None, sha1 if hashes else None))
        manifests.write_manifest(model_dir, manifests.Manifest(
            repo_id=repo_id, revision="main", commit=COMMIT, files=entries,
            pulled_at=pulled_at if pulled_at is not None else time.time(), last_used=last_used,
            pinned=pinned))
    return model_dir


def make_hf_cache_entry(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
                        lfs: set[str] | None = None, ref: str = "main") -> Path:
    """``models--org--name`` with blobs named by sha256 (``lfs`` paths) or git sha1 (the
    rest), ``snapshots/<commit>/`` of relative symlinks and ``refs/<ref>``."""
    entry = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / ref).write_text(commit)
    snap = entry / "snapshots" / commit
    lfs = set(files) if lfs is None else lfs
    for rel, content in files.items():
        if rel in lfs:
            name = hashlib.sha256(content).hexdigest()
        else:
            name = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        (entry / "blobs" / name).write_bytes(content)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(entry / "blobs" / name, link.parent)
        link.symlink_to(target)
    return entry


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))
