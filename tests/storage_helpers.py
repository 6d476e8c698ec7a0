"""Helpers for the storage tests: models with real (non-sparse) content and hashed manifests,
and a fake Hugging Face cache entry laid out as huggingface_hub writes it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
    """A model of exactly these files (real content), managed with a hashed manifest through
    the one manifest builder (builders.manage)."""
    import builders

    model_dir = Path(root) / repo_id.replace("/", "--")
    for rel, content in files.items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if managed:
        builders.manage(model_dir, repo_id, commit=COMMIT, hashes=hashes, last_used=last_used,
                        pulled_at=pulled_at, pinned=pinned)
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
