"""A model's manifest: what vmm recorded when it pulled or adopted the model.

``<model>/.vmm/manifest.json``: the repo, commit, every file with its size and hashes,
usage counters. Written atomically (temporary name, fsync, rename), and always under the
manifest's update lock (``<model>/.vmm/manifest.lock``, an exclusive ``flock`` held for the
milliseconds of a read-modify-write): :func:`update` is the one read-modify-write, so usage
bookkeeping (inspect, serve) never overwrites what a pull has just written. The update lock
is apart from the model lock, so a serve holding the model's shared lock still records use.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError
from vmm.core.fsutil import FILE_MODE, atomic_write_json
from vmm.core.store.paths import manifest_lock_path, manifest_path

MANIFEST_VERSION = 1


@dataclass
class ManifestFile:
    path: str
    size: int
    sha256: str | None = None      # LFS files: the Hub's lfs.sha256
    git_sha1: str | None = None    # every file: the git blob id
    # What identified the file on disk (os.stat) when its hash was last checked: while all
    # of these are unchanged, the file is the one that was verified. None: not recorded.
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    inode: int | None = None
    device: int | None = None
    verified_at: float | None = None

    def identity(self) -> tuple | None:
        """(size, mtime_ns, ctime_ns, inode, device) recorded at verification, or None."""
        if self.mtime_ns is None or self.ctime_ns is None or self.inode is None or self.device is None:
            return None
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device)


def stat_identity(st) -> tuple:
    """What identifies a file on disk, in :meth:`ManifestFile.identity`'s order. ctime
    catches an in-place rewrite whose mtime was put back (os.utime cannot set ctime)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass
class Manifest:
    """What vmm recorded when it pulled (or adopted) a model."""

    repo_id: str
    revision: str | None = None          # what was asked for (branch, tag or sha)
    commit: str | None = None            # the resolved commit sha
    quant: str | None = None
    files: list[ManifestFile] = field(default_factory=list)
    pulled_at: float | None = None
    last_used: float | None = None
    use_counts: dict[str, int] = field(default_factory=dict)
    pinned: bool = False
    previous_revisions: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["manifest_version"] = MANIFEST_VERSION
        doc["total_bytes"] = self.total_bytes
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in known}
        file_fields = {f.name for f in dataclasses.fields(ManifestFile)}
        kwargs["files"] = [ManifestFile(**{k: v for k, v in f.items() if k in file_fields})
                           for f in doc.get("files", [])]
        if not isinstance(kwargs.get("repo_id"), str):
            raise ValueError("repo_id missing")
        return cls(**kwargs)


def read_manifest(model_dir: Path) -> Manifest | None:
    """The model's manifest, None for a hand-made directory; exit 5 when it is corrupt."""
    path = manifest_path(model_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError("cannot read manifest", str(path), exc.strerror or str(exc)) from exc
    try:
        return Manifest.from_json(jsonfile.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            "corrupt manifest", str(path), "run `vmm pull` again to rewrite it, or delete it"
        ) from exc


USAGE_FIELDS = ("last_used", "use_counts", "pinned")   # bookkeeping others update meanwhile

_held = threading.local()      # model dirs whose update lock this thread holds (re-entry)


@contextmanager
def update_lock(model_dir: Path) -> Iterator[None]:
    """Hold the manifest's update lock: an exclusive flock, waited for (held for milliseconds).

    Re-entrant within a thread. The lock file is opened for writing when possible, else
    read-only (a lock file another user created without group write: flock works on a
    read-only descriptor on local filesystems). Raises OSError when neither works.
    """
    import fcntl

    key = str(Path(model_dir).absolute())
    held: set[str] = _held.__dict__.setdefault("dirs", set())
    if key in held:
        yield
        return
    path = manifest_lock_path(Path(model_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)


def write_manifest(model_dir: Path, manifest: Manifest, carry_usage: bool = False) -> None:
    """Write the manifest atomically under the update lock.

    ``carry_usage``: keep the usage bookkeeping (:data:`USAGE_FIELDS`) of the manifest on
    disk at the moment of writing, for a writer (pull) that built ``manifest`` from a read
    made long before: uses recorded meanwhile are kept, not rolled back.
    """
    with update_lock(model_dir):
        if carry_usage:
            try:
                current = read_manifest(model_dir)
            except IntegrityError:
                current = None
            if current is not None:
                for name in USAGE_FIELDS:
                    setattr(manifest, name, getattr(current, name))
        atomic_write_json(manifest_path(model_dir), manifest.to_json())


def update(model_dir: Path, fn: Callable[[Manifest | None], Manifest | None]) -> Manifest | None:
    """The one read-modify-write of a manifest: read, ``fn``, write, under the update lock.

    ``fn`` gets the manifest on disk (None when the model has none) and returns the manifest
    to write (the same object changed, or a new one), or None to write nothing. Returns what
    was written. A corrupt manifest raises IntegrityError (exit 5) before ``fn`` runs.
    """
    if not manifest_path(model_dir).exists():
        # A directory vmm does not manage (a hand-made model, a path given to inspect):
        # nothing to read, and no lock file is left in it unless fn makes a manifest.
        new = fn(None)
        if new is not None:
            write_manifest(model_dir, new)
        return new
    with update_lock(model_dir):
        new = fn(read_manifest(model_dir))
        if new is not None:
            atomic_write_json(manifest_path(model_dir), new.to_json())
        return new


def touch_usage(model_dir: Path, what: str) -> None:
    """Record last-used time and a per-command count; silent on read-only roots."""
    def bump(manifest: Manifest | None) -> Manifest | None:
        if manifest is None:
            return None
        manifest.last_used = time.time()
        manifest.use_counts[what] = manifest.use_counts.get(what, 0) + 1
        return manifest

    try:
        update(model_dir, bump)
    except (IntegrityError, OSError):
        pass
