"""Cleanup of the models root: least-recently-used models out, pins, stale partial downloads.

- ``gc(root, keep_under_bytes=None, unused_for_s=None, partials_older_than_s=..., dry_run)``
  removes models unused for longer than ``unused_for_s``, then the least recently used
  ones until the root's model bytes fit under ``keep_under_bytes``. Never a pinned model,
  never a locked one (a pull, serve or rm holds it). Deletion is ``vmm rm``'s own
  (``catalog.delete_model_from_volume``: exclusive lock, rename, rmtree without following links).
- Last use: the manifest's ``last_used``, else ``pulled_at``, else the directory's mtime.
- Bytes are counted by inode: a file hardlinked into another model (``vmm dedup``) or into
  an HF cache frees nothing until its last name goes, and the report says so.
- ``pin(root, name)`` / ``unpin(root, name)``: the manifest's ``pinned`` flag for managed
  models and a pin file ``<root>/.vmm/pins/<dir>`` for every model (hand-made ones too).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import names
from vmm.core import fsutil
from vmm.core.store import catalog, local, locking, manifests, paths
from vmm.core.units import parse_duration, parse_size  # noqa: F401 (gc.parse_* API)
from vmm.core.errors import BusyError, VmmError

DEFAULT_PARTIALS_OLDER_THAN_S = 24 * 3600


# --------------------------------------------------------------------------- pins

@dataclass
class PinResult:
    name: str
    path: str
    pinned: bool


def is_pinned(root: Path, model: local.LocalModel) -> bool:
    if model.manifest is not None and model.manifest.pinned:
        return True
    return paths.pin_path(Path(root), model.path.name).exists()


def _set_pin(root: Path, name: str, pinned: bool) -> PinResult:
    root = Path(root).absolute()
    model = local.locate_model(name, root)
    pin_file = paths.pin_path(root, model.path.name)
    local.ensure_root(root)
    if pinned:
        fsutil.atomic_write_bytes(pin_file, f"{model.name}\n".encode())
    else:
        try:
            pin_file.unlink()
        except FileNotFoundError:
            pass
    if model.manifest is not None and model.manifest.pinned != pinned:
        manifest = manifests.read_manifest(model.path)
        if manifest is not None:
            manifest.pinned = pinned
            manifests.write_manifest(model.path, manifest)
    return PinResult(model.name, str(model.path), pinned)


def pin(root: Path, name: str) -> PinResult:
    """Keep a model out of ``gc`` whatever its age and size."""
    return _set_pin(root, name, True)


def unpin(root: Path, name: str) -> PinResult:
    return _set_pin(root, name, False)


# --------------------------------------------------------------------------- gc

@dataclass
class GcModel:
    name: str
    path: str
    size_bytes: int                 # apparent bytes of the model's files
    bytes_freed: int                # bytes whose last name went with it (0 for shared files)
    last_used: str | None           # ISO 8601 UTC, as in `vmm ls --json`
    last_used_source: str           # "last_used", "pulled_at" or "mtime"
    reason: str                     # "unused" or "over quota"
    last_used_epoch: float | None = None   # the same instant in epoch seconds


@dataclass
class GcSkipped:
    name: str
    reason: str


@dataclass
class GcPartial:
    path: str
    size_bytes: int
    age_s: float


@dataclass
class GcReport:
    root: str
    dry_run: bool
    keep_under_bytes: int | None
    unused_for_s: float | None
    removed: list[GcModel] = field(default_factory=list)
    skipped: list[GcSkipped] = field(default_factory=list)
    partials: list[GcPartial] = field(default_factory=list)
    bytes_freed: int = 0            # disk bytes released (models + partials)
    root_bytes_before: int = 0      # model bytes in the root, each inode once
    root_bytes_after: int = 0
    fits: bool = True               # root_bytes_after <= keep_under_bytes (true without a limit)


@dataclass
class _Candidate:
    model: local.LocalModel
    inodes: dict[tuple[int, int], int]   # inode -> names of it inside this model
    size_bytes: int
    last_used: float | None
    source: str


def _inventory(model_dir: Path) -> tuple[dict[tuple[int, int], int], int, dict[tuple[int, int], tuple[int, int]]]:
    """(inode -> names here, apparent bytes, inode -> (size, st_nlink)) of a model dir.

    Bytes are the model's size by :func:`local.walk_model_entries`' rule (the size `vmm ls`
    shows); the inodes include hidden dirs (.vmm metadata, partials, .cache): they go with
    the model, so they count in what its removal frees.
    """
    inodes: dict[tuple[int, int], int] = {}
    info: dict[tuple[int, int], tuple[int, int]] = {}
    total = 0
    for rel, entry in local.walk_model_entries(model_dir, include_hidden=True):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        inodes[key] = inodes.get(key, 0) + 1
        info[key] = (st.st_size, st.st_nlink)
        if not local.in_hidden_dir(rel):
            total += st.st_size
    return inodes, total, info


def _last_used(model: local.LocalModel) -> tuple[float | None, str]:
    m = model.manifest
    if m is not None and m.last_used:
        return m.last_used, "last_used"
    if m is not None and m.pulled_at:
        return m.pulled_at, "pulled_at"
    try:
        return model.path.stat().st_mtime, "mtime"
    except OSError:
        return None, "mtime"


def gc(root: Path, keep_under_bytes: int | None = None, unused_for_s: float | None = None,
       partials_older_than_s: float | None = DEFAULT_PARTIALS_OLDER_THAN_S, dry_run: bool = False,
       now: float | None = None) -> GcReport:
    root = Path(root).absolute()
    now = time.time() if now is None else now
    report = GcReport(root=str(root), dry_run=dry_run, keep_under_bytes=keep_under_bytes,
                      unused_for_s=unused_for_s)
    candidates: list[_Candidate] = []
    inode_info: dict[tuple[int, int], tuple[int, int]] = {}
    in_root: dict[tuple[int, int], int] = {}      # inode -> names inside the root
    locked: set[str] = set()
    for model_dir in local.model_dirs(root):
        try:
            model = local.load_model(model_dir)
        except VmmError:
            model = local.LocalModel(model_dir.name, model_dir, None)
        inodes, size, inf = _inventory(model_dir)
        inode_info.update(inf)
        for key, n in inodes.items():
            in_root[key] = in_root.get(key, 0) + n
        if locking.is_locked(root, model_dir.name):
            locked.add(model_dir.name)
        last, source = _last_used(model)
        candidates.append(_Candidate(model, inodes, size, last, source))

    if partials_older_than_s is not None:
        _partials(root, candidates, locked, partials_older_than_s, now, dry_run, report)
        _stale_imports(root, partials_older_than_s, now, dry_run, report)

    def root_bytes() -> int:
        return sum(inode_info[k][0] for k, n in in_root.items() if n > 0)

    report.root_bytes_before = root_bytes()
    remaining_links = {k: v[1] for k, v in inode_info.items()}

    def eligible(c: _Candidate) -> str | None:
        if is_pinned(root, c.model):
            return "pinned"
        if c.model.path.name in locked:
            return "locked by another vmm process (pull, serve or rm)"
        return None

    def remove(c: _Candidate, reason: str) -> None:
        gone.add(c.model.path.name)          # tried once, whatever the outcome
        if not dry_run:
            try:
                target = names.dir_name_to_repo_id(c.model.path.name) or c.model.path.name
                catalog.delete_model_from_volume(root, target)
            except BusyError:
                report.skipped.append(GcSkipped(c.model.name, "locked by another vmm process (pull, serve or rm)"))
                return
            except VmmError as exc:
                report.skipped.append(GcSkipped(c.model.name, exc.line().removeprefix("error: ")))
                return
        freed = 0
        for key, n in c.inodes.items():
            in_root[key] -= n
            remaining_links[key] -= n
            if remaining_links[key] <= 0:
                freed += inode_info[key][0]
        report.removed.append(GcModel(c.model.name, str(c.model.path), c.size_bytes, freed,
                                      catalog.iso_time(c.last_used), c.source, reason, c.last_used))

    noted: set[str] = set()
    gone: set[str] = set()
    ordered = sorted(candidates, key=lambda c: (c.last_used if c.last_used is not None else 0.0, c.model.path.name))
    if unused_for_s is not None:
        for c in ordered:
            if c.last_used is not None and now - c.last_used < unused_for_s:
                continue
            why = eligible(c)
            if why:
                report.skipped.append(GcSkipped(c.model.name, why))
                noted.add(c.model.path.name)
                continue
            remove(c, "unused")
    if keep_under_bytes is not None:
        for c in ordered:
            if root_bytes() <= keep_under_bytes:
                break
            if c.model.path.name in gone:
                continue
            why = eligible(c)
            if why:
                if c.model.path.name not in noted:
                    report.skipped.append(GcSkipped(c.model.name, why))
                    noted.add(c.model.path.name)
                continue
            remove(c, "over quota")
        report.fits = root_bytes() <= keep_under_bytes
    report.root_bytes_after = root_bytes()
    report.bytes_freed = sum(m.bytes_freed for m in report.removed) + sum(p.size_bytes for p in report.partials)
    return report


def _partials(root: Path, candidates: list[_Candidate], locked: set[str], older_than_s: float,
              now: float, dry_run: bool, report: GcReport) -> None:
    """Remove files under ``<model>/.vmm/partial/`` untouched for ``older_than_s``.

    A model whose lock is held (a pull in progress) keeps its partials whatever their age.
    """
    for c in candidates:
        pdir = paths.partial_dir(c.model.path)
        if not pdir.is_dir() or pdir.is_symlink():
            continue
        if c.model.path.name in locked:
            continue
        for dirpath, _dirnames, filenames in os.walk(pdir):
            for fname in filenames:
                path = Path(dirpath) / fname
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                age = now - st.st_mtime
                if age < older_than_s:
                    continue
                if not dry_run:
                    try:
                        path.unlink()
                    except OSError as exc:
                        report.skipped.append(GcSkipped(c.model.name, f"{path}: {exc.strerror or exc}"))
                        continue
                freed = st.st_size if st.st_nlink <= 1 else 0
                report.partials.append(GcPartial(str(path), freed, age))
        if not dry_run:
            for dirpath, _dirnames, _filenames in sorted(os.walk(pdir, topdown=False), reverse=False):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


def _stale_imports(root: Path, older_than_s: float, now: float, dry_run: bool, report: GcReport) -> None:
    """Staging dirs of an ``vmm import`` that died (``<root>/.<dir>.import-<pid>``)."""
    import re
    import shutil

    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if not re.fullmatch(r"\..+\.import-\d+", entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        age = now - entry.stat(follow_symlinks=False).st_mtime
        if age < older_than_s:
            continue
        _, size, _ = _inventory(Path(entry.path))
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
        report.partials.append(GcPartial(entry.path, size, age))


