"""Identical files stored once: hardlinks across the models of a root.

- ``plan(root) -> DedupPlan`` finds files with the same content (sha256 from manifests;
  hand-made dirs hashed on demand, only when another file has the same size) and chooses
  for each group the copy to keep, hashed now and required to match, so a damaged copy is
  never spread. Nothing is changed; ``plan.report`` is the dry-run report. Locked models
  (pulling, serving) are skipped; files on another filesystem than the kept copy are
  skipped and reported.
- ``apply(plan) -> DedupReport`` replaces exactly the planned names with hardlinks of the
  kept copy, holding the exclusive lock of every model involved (taken without waiting:
  a model locked since the plan is skipped) and re-checking under it that both files are
  still the ones the plan hashed (same inode, size, mtime). A file is replaced atomically:
  a link under a temporary name in the same directory, then ``rename`` over the old name,
  so a reader always sees a whole file.
- ``dedup(root, dry_run=False)``: plan, then apply (only plan with ``dry_run``).
- ``find_verified_blob(root, sha256, size) -> Path | None``: a file of the root with that
  content, re-hashed, for pull to link instead of downloading.
- ``link_or_copy(src, dst) -> "link" | "copy"``: atomic hardlink, else copy.

Why ``rm`` stays safe: a hardlink is a second name of one inode; deleting one model's
directory removes its names only, and the data lives while any other name does.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import hashing
from vmm.core.store import local, locking, manifests
from vmm.core.errors import BusyError

MIN_SIZE_BYTES = 64 << 10     # below this a file saves less than the metadata it costs to link
LOCKED = "locked by another vmm process (pull, serve or rm)"


@dataclass
class DedupGroup:
    sha256: str
    size_bytes: int
    files: list[str]              # "<dir>/<rel>" of every copy, the kept one first
    linked: int = 0               # names replaced by a link (would be, in a dry run)
    bytes_saved: int = 0


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class DedupReport:
    root: str
    dry_run: bool
    groups: list[DedupGroup] = field(default_factory=list)
    bytes_saved: int = 0
    linked: int = 0
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class _Entry:
    model: str                   # directory name
    rel: str
    path: Path
    dev: int
    ino: int
    nlink: int
    size: int
    sha256: str | None
    mtime_ns: int = 0

    def unchanged(self) -> bool:
        """Still the file the plan saw (checked under the model's lock before linking)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (self.dev, self.ino, self.size, self.mtime_ns)


@dataclass
class _Link:
    group: DedupGroup
    keep: _Entry
    names: list[_Entry]          # every name of one old inode, replaced together


@dataclass
class DedupPlan:
    """What dedup will link, chosen by :func:`plan`; ``report`` is what the operator sees."""

    report: DedupReport
    links: list[_Link] = field(default_factory=list)


def _model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of every regular file, vmm metadata and hidden top dirs excluded."""
    out: list[tuple[str, Path]] = []
    for rel, entry in local.walk_model_entries(model_dir):
        try:
            if entry.is_file(follow_symlinks=False):
                out.append((rel, Path(entry.path)))
        except OSError:
            continue
    return sorted(out)


def _tmp_name(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def replace_with_link(keep: Path, dst: Path) -> None:
    """Make ``dst`` a hardlink of ``keep``, atomically (link to a temp name, rename over)."""
    tmp = _tmp_name(dst)
    os.link(keep, tmp)
    try:
        os.replace(tmp, dst)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def link_or_copy(src: Path | str, dst: Path | str) -> str:
    """Put ``src``'s content at ``dst`` by hardlink when possible, else by copy; atomic.

    Returns ``"link"`` or ``"copy"``. Copies go to a temporary name in ``dst``'s directory
    first, so ``dst`` is never a half file.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_with_link(src, dst)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP,
                             getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
            raise
    tmp = _tmp_name(dst)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, hashing.BUFFER_BYTES)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        _discard(tmp)
        raise
    return "copy"


def _managed_dirs(root: Path) -> list[Path]:
    return list(local.model_dirs(root))


def plan(root: Path, min_size_bytes: int = MIN_SIZE_BYTES) -> DedupPlan:
    """Choose what to link; nothing is changed. ``plan.report`` is the dry-run report."""
    root = Path(root).absolute()
    planned = DedupPlan(DedupReport(root=str(root), dry_run=True))
    entries: list[_Entry] = []
    for model_dir in _managed_dirs(root):
        name = model_dir.name
        if locking.is_locked(root, name):
            planned.report.skipped.append(Skipped(name, LOCKED))
            continue
        try:
            manifest = manifests.read_manifest(model_dir)
        except Exception:   # noqa: BLE001 - a corrupt manifest: hash the files instead
            manifest = None
        known = {f.path: f for f in (manifest.files if manifest else [])}
        for rel, path in _model_files(model_dir):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_size < min_size_bytes:
                continue
            mf = known.get(rel)
            sha = mf.sha256 if mf is not None and mf.size == st.st_size and mf.sha256 else None
            entries.append(_Entry(name, rel, path, st.st_dev, st.st_ino, st.st_nlink, st.st_size, sha,
                                  st.st_mtime_ns))
    _plan_groups(entries, planned)
    _total(planned.report)
    return planned


def _total(report: DedupReport) -> None:
    report.groups = [g for g in report.groups if g.linked]
    report.groups.sort(key=lambda g: -g.bytes_saved)
    report.bytes_saved = sum(g.bytes_saved for g in report.groups)
    report.linked = sum(g.linked for g in report.groups)


def apply(planned: DedupPlan) -> DedupReport:
    """Link what ``planned`` lists, under the lock of every model involved, re-checked there."""
    seen = planned.report
    root = Path(seen.root)
    report = DedupReport(root=seen.root, dry_run=False, skipped=list(seen.skipped))
    groups: dict[int, DedupGroup] = {}
    with ExitStack() as stack:
        held: dict[str, bool] = {}
        for link in planned.links:
            for model in {link.keep.model, *(e.model for e in link.names)}:
                if model not in held:
                    try:
                        stack.enter_context(locking.model_lock(root, model, "dedup"))
                        held[model] = True
                    except BusyError:
                        held[model] = False
                        report.skipped.append(Skipped(model, LOCKED))
        for link in planned.links:
            group = groups.setdefault(id(link.group), DedupGroup(
                link.group.sha256, link.group.size_bytes, [f"{link.keep.model}/{link.keep.rel}"]))
            _apply_link(link, group, held, report)
    report.groups = list(groups.values())
    _total(report)
    return report


def _apply_link(link: _Link, group: DedupGroup, held: dict[str, bool], report: DedupReport) -> None:
    keep = link.keep
    if not held.get(keep.model) or not keep.unchanged():
        for e in link.names:
            report.skipped.append(Skipped(e.model, f"{e.rel}: {keep.model}/{keep.rel} "
                                                   + ("is locked" if not held.get(keep.model) else "changed since the plan")))
        return
    replaced = 0
    for e in link.names:
        if not held.get(e.model):
            continue      # listed once as locked
        if not e.unchanged():
            report.skipped.append(Skipped(e.model, f"{e.rel}: changed since the plan"))
            continue
        try:
            replace_with_link(keep.path, e.path)
        except OSError as exc:
            report.skipped.append(Skipped(e.model, f"{e.rel}: {exc.strerror or exc}"))
            continue
        group.files.append(f"{e.model}/{e.rel}")
        replaced += 1
    group.linked += replaced
    if replaced == link.names[0].nlink:
        group.bytes_saved += group.size_bytes


def dedup(root: Path, dry_run: bool = False, min_size_bytes: int = MIN_SIZE_BYTES) -> DedupReport:
    """Plan, then apply (only plan with ``dry_run``)."""
    planned = plan(root, min_size_bytes)
    return planned.report if dry_run else apply(planned)


def _plan_groups(entries: list[_Entry], planned: DedupPlan) -> None:
    by_size: dict[int, list[_Entry]] = defaultdict(list)
    for e in entries:
        by_size[e.size].append(e)
    hashed: dict[tuple[int, int], str] = {}     # inode -> sha256 computed in this run
    for size, same_size in by_size.items():
        if len({(e.dev, e.ino) for e in same_size}) < 2:
            continue
        by_sha: dict[str, list[_Entry]] = defaultdict(list)
        for e in same_size:
            if e.sha256 is None:
                key = (e.dev, e.ino)
                if key not in hashed:
                    try:
                        hashed[key] = hashing.sha256_file(e.path)
                    except OSError:
                        continue
                e.sha256 = hashed[key]
            by_sha[e.sha256].append(e)
        for sha, group in by_sha.items():
            inodes = {(e.dev, e.ino) for e in group}
            if len(inodes) < 2:
                continue
            _plan_group(sha, size, group, hashed, planned)


def _plan_group(sha: str, size: int, group: list[_Entry], hashed: dict, planned: DedupPlan) -> None:
    report = planned.report
    # The kept inode: the one with most names already (fewest renames), then by path.
    by_inode: dict[tuple[int, int], list[_Entry]] = defaultdict(list)
    for e in group:
        by_inode[(e.dev, e.ino)].append(e)
    order = sorted(by_inode, key=lambda k: (-len(by_inode[k]), by_inode[k][0].model, by_inode[k][0].rel))
    keep_key = None
    for key in order:
        # Never spread a damaged copy: the kept one is hashed now unless this run already did.
        actual = hashed.get(key)
        if actual is None:
            try:
                actual = hashed[key] = hashing.sha256_file(by_inode[key][0].path)
            except OSError:
                continue
        if actual == sha:
            keep_key = key
            break
        first = by_inode[key][0]
        report.skipped.append(Skipped(first.model, f"{first.rel} does not match its manifest sha256 "
                                                    "(run `vmm check`); not used for dedup"))
    if keep_key is None:
        return
    keep = by_inode[keep_key][0]
    result = DedupGroup(sha256=sha, size_bytes=size,
                        files=[f"{e.model}/{e.rel}" for e in by_inode[keep_key]])
    for key in order:
        if key == keep_key:
            continue
        names = by_inode[key]
        if key in hashed and hashed[key] != sha:
            continue     # reported above as damaged; replacing it would be a repair, left to check/pull
        if key[0] != keep_key[0]:
            for e in names:
                report.skipped.append(Skipped(e.model, f"{e.rel}: on another filesystem than "
                                                       f"{keep.model}/{keep.rel}; cannot hardlink"))
            continue
        planned.links.append(_Link(result, keep, names))
        result.files.extend(f"{e.model}/{e.rel}" for e in names)
        result.linked += len(names)
        # The old inode is freed only when every name it has is gone: names outside the
        # models root (an HF cache, a backup) keep it alive, and then nothing is saved.
        if len(names) == names[0].nlink:
            result.bytes_saved += size
    report.groups.append(result)


def find_verified_blob(root: Path, sha256: str, size: int) -> Path | None:
    """A file of the root whose content is ``sha256`` (re-hashed now), or None.

    Candidates come from manifests (managed models only: their hashes were checked when
    pulled); the match is hashed again before it is returned, so pull links only bytes
    that are what the Hub says.
    """
    root = Path(root).absolute()
    for model_dir in _managed_dirs(root):
        try:
            manifest = manifests.read_manifest(model_dir)
        except Exception:   # noqa: BLE001
            continue
        if manifest is None:
            continue
        for mf in manifest.files:
            if mf.sha256 != sha256 or mf.size != size:
                continue
            path = model_dir / mf.path
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size != size:
                    continue
                if hashing.sha256_file(path) == sha256:
                    return path
            except OSError:
                continue
    return None
