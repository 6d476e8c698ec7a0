"""Cleanup of the models root: least-recently-used models out, pins, stale partial downloads.

- ``plan(root, keep_under_bytes=None, unused_for_s=None, partials_older_than_s=...) -> GcPlan``
  chooses, touching nothing: models unused for longer than ``unused_for_s``, then the least
  recently used until the root's model bytes fit under ``keep_under_bytes``; stale partial
  downloads and import staging. Never a pinned model, never a locked one (pull, serve, rm).
  ``plan.report`` is the dry-run report, the list an operator confirms.
- ``apply(plan) -> GcReport`` removes exactly that list and nothing else: each model under
  its exclusive lock (taken without waiting), after checking under that lock that it is
  still what the plan saw (not pinned since, manifest and directory unchanged); otherwise it
  is kept and listed in ``skipped`` with the reason. Partials go only under the lock of
  their model. Deletion is ``vmm rm``'s own (``catalog.remove_locked``: rename, rmtree
  without following links).
- ``gc(...)``: plan, then apply (or only plan with ``dry_run``), for callers that do not ask.
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

from vmm.core import fsutil, units
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
        def flag(manifest: manifests.Manifest | None) -> manifests.Manifest | None:
            if manifest is None or manifest.pinned == pinned:
                return None
            manifest.pinned = pinned
            return manifest

        manifests.update(model.path, flag)
    return PinResult(model.name, str(model.path), pinned)


def pin(root: Path, name: str) -> PinResult:
    """Keep a model out of ``gc`` whatever its age and size."""
    return _set_pin(root, name, True)


def unpin(root: Path, name: str) -> PinResult:
    return _set_pin(root, name, False)


# --------------------------------------------------------------------------- gc

LOCKED = "locked by another vmm process (pull, serve or rm)"


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


def _fingerprint(model_dir: Path) -> tuple:
    """What identifies the model as the plan saw it: its directory and manifest's metadata.

    A pull, a repair, an import or a recorded use rewrites the manifest (new inode, new
    mtime), so any of them between plan and apply shows here.
    """
    def ident(path: Path) -> tuple | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    return ident(model_dir), ident(paths.manifest_path(model_dir))


@dataclass
class _Candidate:
    model: local.LocalModel
    inodes: dict[tuple[int, int], int]   # inode -> names of it inside this model
    size_bytes: int
    last_used: float | None
    source: str
    fingerprint: tuple

    def removed(self, bytes_freed: int, reason: str) -> GcModel:
        return GcModel(self.model.name, str(self.model.path), self.size_bytes, bytes_freed,
                       units.iso_time(self.last_used), self.source, reason, self.last_used)


@dataclass
class _PlannedPartial:
    entry: GcPartial
    dir_name: str                   # whose lock guards it
    model_name: str
    mtime_ns: int
    staging: bool                   # an import staging directory, removed whole


class _Accounting:
    """Root bytes by inode: a name removed frees its inode's bytes only with its last name."""

    def __init__(self, inode_info: dict[tuple[int, int], tuple[int, int]], in_root: dict[tuple[int, int], int]):
        self.info = inode_info
        self.in_root = dict(in_root)
        self.links = {k: v[1] for k, v in inode_info.items()}

    def root_bytes(self) -> int:
        return sum(self.info[k][0] for k, n in self.in_root.items() if n > 0)

    def remove(self, inodes: dict[tuple[int, int], int]) -> int:
        freed = 0
        for key, n in inodes.items():
            self.in_root[key] -= n
            self.links[key] -= n
            if self.links[key] <= 0:
                freed += self.info[key][0]
        return freed


@dataclass
class GcPlan:
    """What gc will remove, chosen by :func:`plan`; ``report`` is what the operator sees."""

    report: GcReport
    candidates: list[tuple[_Candidate, str]] = field(default_factory=list)   # (model, reason), in order
    partials: list[_PlannedPartial] = field(default_factory=list)
    inode_info: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    in_root: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.candidates and not self.partials


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


def plan(root: Path, keep_under_bytes: int | None = None, unused_for_s: float | None = None,
         partials_older_than_s: float | None = DEFAULT_PARTIALS_OLDER_THAN_S,
         now: float | None = None) -> GcPlan:
    """Choose what gc removes; nothing is touched. ``plan.report`` is the dry-run report."""
    root = Path(root).absolute()
    now = time.time() if now is None else now
    report = GcReport(root=str(root), dry_run=True, keep_under_bytes=keep_under_bytes,
                      unused_for_s=unused_for_s)
    result = GcPlan(report)
    candidates: list[_Candidate] = []
    locked: set[str] = set()
    for model_dir in local.model_dirs(root):
        try:
            model = local.load_model(model_dir)
        except VmmError:
            model = local.LocalModel(model_dir.name, model_dir, None)
        fingerprint = _fingerprint(model_dir)
        inodes, size, inf = _inventory(model_dir)
        result.inode_info.update(inf)
        for key, n in inodes.items():
            result.in_root[key] = result.in_root.get(key, 0) + n
        if locking.is_locked(root, model_dir.name):
            locked.add(model_dir.name)
        last, source = _last_used(model)
        candidates.append(_Candidate(model, inodes, size, last, source, fingerprint))
    _choose(root, result, candidates, locked, now)
    if partials_older_than_s is not None:
        chosen = {c.model.path.name for c, _ in result.candidates}
        _plan_partials(result, [c for c in candidates if c.model.path.name not in chosen],
                       locked, partials_older_than_s, now)
        _plan_stale_imports(root, result, partials_older_than_s, now)
    report.bytes_freed = sum(m.bytes_freed for m in report.removed) + sum(p.size_bytes for p in report.partials)
    return result


def _choose(root: Path, result: GcPlan, candidates: list[_Candidate], locked: set[str], now: float) -> None:
    """Fill ``result`` with the models to remove: unused ones first, then LRU to the quota."""
    report = result.report
    acct = _Accounting(result.inode_info, result.in_root)
    report.root_bytes_before = acct.root_bytes()
    noted: set[str] = set()
    chosen: set[str] = set()

    def take(c: _Candidate, reason: str) -> None:
        name = c.model.path.name
        if name in chosen or name in noted:
            return
        why = "pinned" if is_pinned(root, c.model) else LOCKED if name in locked else None
        if why:
            report.skipped.append(GcSkipped(c.model.name, why))
            noted.add(name)
            return
        chosen.add(name)
        freed = acct.remove(c.inodes)
        result.candidates.append((c, reason))
        report.removed.append(c.removed(freed, reason))

    ordered = sorted(candidates, key=lambda c: (c.last_used if c.last_used is not None else 0.0, c.model.path.name))
    if report.unused_for_s is not None:
        for c in ordered:
            if c.last_used is None or now - c.last_used >= report.unused_for_s:
                take(c, "unused")
    if report.keep_under_bytes is not None:
        for c in ordered:
            if acct.root_bytes() <= report.keep_under_bytes:
                break
            take(c, "over quota")
        report.fits = acct.root_bytes() <= report.keep_under_bytes
    report.root_bytes_after = acct.root_bytes()


def _plan_partials(result: GcPlan, candidates: list[_Candidate], locked: set[str],
                   older_than_s: float, now: float) -> None:
    """Files under ``<model>/.vmm/partial/`` untouched for ``older_than_s``.

    A model whose lock is held (a pull in progress) keeps its partials whatever their age.
    """
    for c in candidates:
        pdir = paths.partial_dir(c.model.path)
        if not pdir.is_dir() or pdir.is_symlink() or c.model.path.name in locked:
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
                entry = GcPartial(str(path), st.st_size if st.st_nlink <= 1 else 0, age)
                result.partials.append(_PlannedPartial(entry, c.model.path.name, c.model.name,
                                                       st.st_mtime_ns, staging=False))
                result.report.partials.append(entry)


def _plan_stale_imports(root: Path, result: GcPlan, older_than_s: float, now: float) -> None:
    """Staging dirs of a ``vmm import`` that died (:func:`paths.import_staging`)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        owner = paths.import_staging_owner(entry.name)
        if owner is None or not entry.is_dir(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        age = now - st.st_mtime
        if age < older_than_s:
            continue
        size = sum(e.stat(follow_symlinks=False).st_size
                   for _rel, e in local.walk_model_entries(Path(entry.path), include_hidden=True))
        gp = GcPartial(entry.path, size, age)
        result.partials.append(_PlannedPartial(gp, owner, owner, st.st_mtime_ns, staging=True))
        result.report.partials.append(gp)


def apply(planned: GcPlan) -> GcReport:
    """Remove what ``planned`` lists, each under its model's lock, re-checked under that lock.

    Nothing outside the plan is removed; a model or partial that changed since the plan
    (pinned, used, pulled, locked) is kept and listed in ``skipped`` with the reason.
    """
    seen = planned.report
    root = Path(seen.root)
    report = GcReport(root=seen.root, dry_run=False, keep_under_bytes=seen.keep_under_bytes,
                      unused_for_s=seen.unused_for_s, skipped=list(seen.skipped),
                      root_bytes_before=seen.root_bytes_before)
    acct = _Accounting(planned.inode_info, planned.in_root)
    for c, reason in planned.candidates:
        why = _remove_checked(root, c)
        if why:
            report.skipped.append(GcSkipped(c.model.name, why))
            continue
        report.removed.append(c.removed(acct.remove(c.inodes), reason))
    _apply_partials(root, planned.partials, report)
    report.root_bytes_after = acct.root_bytes()
    if seen.keep_under_bytes is not None:
        report.fits = report.root_bytes_after <= seen.keep_under_bytes
    report.bytes_freed = sum(m.bytes_freed for m in report.removed) + sum(p.size_bytes for p in report.partials)
    return report


def _remove_checked(root: Path, c: _Candidate) -> str | None:
    """Delete one planned model under its lock; the reason it was kept, else None."""
    name = c.model.path.name
    try:
        with locking.model_lock(root, name, "gc"):
            if is_pinned(root, local.LocalModel(c.model.name, c.model.path, _current_manifest(c.model.path))):
                return "pinned since the plan"
            if _fingerprint(c.model.path) != c.fingerprint:
                return "changed since the plan (used, pulled or replaced)"
            catalog.remove_locked(root, name)
    except BusyError:
        return LOCKED
    except VmmError as exc:
        return exc.line().removeprefix("error: ")
    return None


def _current_manifest(model_dir: Path) -> manifests.Manifest | None:
    try:
        return manifests.read_manifest(model_dir)
    except VmmError:
        return None


def _apply_partials(root: Path, planned: list[_PlannedPartial], report: GcReport) -> None:
    """Remove planned partials, each model's under its lock: a pull that started since keeps them."""
    import shutil

    by_model: dict[str, list[_PlannedPartial]] = {}
    for p in planned:
        by_model.setdefault(p.dir_name, []).append(p)
    for dir_name, items in by_model.items():
        try:
            with locking.model_lock(root, dir_name, "gc"):
                for p in items:
                    path = Path(p.entry.path)
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        report.skipped.append(GcSkipped(p.model_name, f"{path}: {exc.strerror or exc}"))
                        continue
                    if st.st_mtime_ns != p.mtime_ns:
                        report.skipped.append(GcSkipped(p.model_name, f"{path}: written since the plan"))
                        continue
                    try:
                        shutil.rmtree(path) if p.staging else path.unlink()
                    except OSError as exc:
                        report.skipped.append(GcSkipped(p.model_name, f"{path}: {exc.strerror or exc}"))
                        continue
                    report.partials.append(p.entry)
                _prune_empty(paths.partial_dir(root / dir_name))
        except BusyError:
            report.skipped.append(GcSkipped(items[0].model_name, "partials kept: " + LOCKED))


def _prune_empty(directory: Path) -> None:
    if not directory.is_dir() or directory.is_symlink():
        return
    for dirpath, _dirnames, _filenames in os.walk(directory, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def gc(root: Path, keep_under_bytes: int | None = None, unused_for_s: float | None = None,
       partials_older_than_s: float | None = DEFAULT_PARTIALS_OLDER_THAN_S, dry_run: bool = False,
       now: float | None = None) -> GcReport:
    """Plan, then apply (only plan with ``dry_run``): for callers that confirm nothing."""
    planned = plan(root, keep_under_bytes, unused_for_s, partials_older_than_s, now)
    return planned.report if dry_run else apply(planned)
