"""The models root: locate models, manifests, atomic writes, locks, delete.

Layout::

    <root>/org--name/                 one model (Hub files as the Hub names them)
    <root>/org--name/.vmm/manifest.json   what vmm knows about it (managed models only)
    <root>/.vmm/locks/org--name.lock  one lock file per model
    <root>/.vmm/...                   other vmm state (runtime records, logs)

Directories put in the root by hand have no manifest and are still first-class models.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import names
from vmm.core.errors import BusyError, DiskSpaceError, IntegrityError, NotFoundError, UsageError

META_DIR = ".vmm"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------- atomic files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskSpaceError("no space left on device", str(path), "free space and retry") from exc
        raise


def atomic_write_json(path: Path, document: Any) -> None:
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------- manifest

@dataclass
class ManifestFile:
    path: str
    size: int
    sha256: str | None = None      # LFS files: the Hub's lfs.sha256
    git_sha1: str | None = None    # every file: the git blob id


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
        kwargs["files"] = [ManifestFile(**{k: v for k, v in f.items()
                                           if k in {"path", "size", "sha256", "git_sha1"}})
                           for f in doc.get("files", [])]
        if not isinstance(kwargs.get("repo_id"), str):
            raise ValueError("repo_id missing")
        return cls(**kwargs)


def manifest_path(model_dir: Path) -> Path:
    return model_dir / META_DIR / MANIFEST_NAME


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
        return Manifest.from_json(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            "corrupt manifest", str(path), "run `vmm pull` again to rewrite it, or delete it"
        ) from exc


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    atomic_write_json(manifest_path(model_dir), manifest.to_json())


def touch_usage(model_dir: Path, what: str) -> None:
    """Record last-used time and a per-command count; silent on read-only roots."""
    try:
        manifest = read_manifest(model_dir)
    except IntegrityError:
        return
    if manifest is None:
        return
    manifest.last_used = time.time()
    manifest.use_counts[what] = manifest.use_counts.get(what, 0) + 1
    try:
        write_manifest(model_dir, manifest)
    except OSError:
        pass


# --------------------------------------------------------------------------- locating

@dataclass
class LocalModel:
    name: str                  # Hub id when known, else the directory name
    path: Path
    manifest: Manifest | None

    @property
    def managed(self) -> bool:
        return self.manifest is not None


def model_dirs(root: Path) -> Iterator[Path]:
    """Every model directory in the root (hidden entries and plain files skipped)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError("cannot read models root", str(root), exc.strerror or str(exc)) from exc
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        yield Path(entry.path)


def load_model(path: Path) -> LocalModel:
    manifest = read_manifest(path)
    if manifest is not None:
        name = manifest.repo_id
    else:
        name = names.dir_name_to_repo_id(path.name) or path.name
    return LocalModel(name=name, path=path, manifest=manifest)


def locate_model(name_or_path: str, root: Path, allow_path: bool = False) -> LocalModel:
    """Find a model by Hub id, directory name, or (``allow_path``) a directory path."""
    if allow_path and ("/" in name_or_path or name_or_path.startswith(".")):
        candidate = Path(name_or_path).expanduser()
        if candidate.is_dir() and (name_or_path.startswith((".", "/", "~"))
                                    or not (root / name_or_path.replace("/", "--")).is_dir()):
            return load_model(candidate.absolute())
    ref = names.parse_model_name(name_or_path)
    path = root / ref.dir_name
    if not path.is_dir():
        raise NotFoundError(
            "model not in the models root", f"{ref.repo_id} (looked in {path})",
            f"run `vmm pull {ref.repo_id}` or `vmm ls --root {root}`",
        )
    return load_model(path)


def ensure_root(root: Path) -> Path:
    """Create the models root for a write; exit 2 (or 7) with the reason when impossible."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / META_DIR
        probe.mkdir(exist_ok=True)
        if not os.access(probe, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError("no space left to create the models root", str(root),
                                 "free space or choose another --root") from exc
        raise UsageError(
            "models root cannot be created or written", str(root),
            f"{exc.strerror or exc}; pass --root or set VMM_ROOT to a writable directory",
        ) from exc
    return root


# --------------------------------------------------------------------------- locks

def lock_path(root: Path, dir_name: str) -> Path:
    return root / META_DIR / "locks" / f"{dir_name}.lock"


def read_lock_info(root: Path, dir_name: str) -> dict[str, Any] | None:
    try:
        return json.loads(lock_path(root, dir_name).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def model_lock(root: Path, dir_name: str, purpose: str, shared: bool = False,
               wait: bool = False, on_wait: Any = None) -> Iterator[None]:
    """Hold a model's lock: exclusive for pull/rm, shared for serve.

    An ``flock`` on ``<root>/.vmm/locks/<dir>.lock``: the kernel drops it when the holding
    process dies (SIGKILL included), so a dead holder never blocks anyone and there is
    nothing stale to take over. The file also records pid, host and start time of the
    exclusive holder for the messages. On NFS, Linux maps flock to POSIX byte-range locks
    served by the NFS lock manager (v4 built in, v3 through lockd), so it holds across
    hosts there as well; on filesystems without lock support the call fails and vmm says so.
    """
    import fcntl

    path = lock_path(root, dir_name)
    ensure_root(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_info(root, dir_name) or {}
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('purpose', '?')})"
            if not wait:
                raise BusyError(
                    "model is locked by another vmm process", f"{dir_name}: {who}",
                    "wait for it to finish, or stop it",
                ) from None
            if on_wait:
                on_wait(who)
            fcntl.flock(fd, mode)
        except OSError as exc:
            raise UsageError("cannot lock the model (filesystem without lock support?)",
                             str(path), exc.strerror or str(exc)) from exc
        if not shared:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.time(), "purpose": purpose}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)


def is_locked(root: Path, dir_name: str) -> bool:
    """True while any process holds the model's lock (shared or exclusive)."""
    import fcntl

    path = lock_path(root, dir_name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


# --------------------------------------------------------------------------- disk

def dir_size_bytes(path: Path) -> tuple[int, int]:
    """(bytes on disk by apparent size, file count) of a model dir, excluding vmm metadata."""
    total, count = 0, 0
    for dirpath, dirnames, filenames in os.walk(path):
        if Path(dirpath) == path and META_DIR in dirnames:
            dirnames.remove(META_DIR)
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            count += 1
    return total, count


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


# --------------------------------------------------------------------------- storage state

PARTIAL_DIR = "partial"    # <model>/.vmm/partial/: a pull's resumable data (gc removes stale ones)
PINS_DIR = "pins"          # <root>/.vmm/pins/<dir>: models gc never removes (hand-made ones too)


def partial_dir(model_dir: Path) -> Path:
    return model_dir / META_DIR / PARTIAL_DIR


def pin_path(root: Path, dir_name: str) -> Path:
    return root / META_DIR / PINS_DIR / dir_name
