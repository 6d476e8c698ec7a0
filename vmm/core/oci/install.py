"""Installing a model artifact into the models root: verified blobs first, names last.

Shared by ``vmm pull oci://`` and ``vmm import`` of an OCI layout. Under the model's lock:

1. files already in place whose recorded (or re-hashed) sha256 is the layer digest are kept;
2. every other blob is fetched into ``<model>/.vmm/partial/oci/<hex>.tmp``, blobs over
   SEGMENT_BYTES in parallel segments (Range requests, like the Hub engine's chunks), with a
   progress map ``<hex>.tmp.json`` (a rerun resumes each segment by offset; the bytes present
   are hashed again), its sha256 checked, then renamed to ``<hex>`` (verified, kept across runs);
3. only when every blob is verified are they linked to their file names (atomic rename each),
   files the old manifest had and the artifact does not are removed, and the manifest is
   written last (with each file's identity, so ``vmm check`` trusts it without re-hashing).

A blob that does not match its digest is deleted and ends the run with exit 5; nothing
unverified ever gets a file name, nothing verified is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import names
from vmm.core.errors import DiskSpaceError, IntegrityError, VmmError
from vmm.core.fsutil import atomic_write_json
from vmm.core.hub import ondisk
from vmm.core.hub.connection import Retry
from vmm.core.hub.transfer import Counters, ProgressCallback, ProgressUpdate
from vmm.core.oci.artifact import ANN_CREATED, Artifact, LayerFile
from vmm.core.oci.registry import with_retries
from vmm.core.store import local, locking, manifests, paths

DISK_MARGIN_BYTES = 64 * 1024 * 1024
PARTIAL_SUBDIR = "oci"

# fetch(layer, start, end, sink, restart): stream bytes [start, end) of the blob into ``sink``;
# raise Retry for a transient failure (the installer resumes from what arrived). A source that
# can only send the whole blob calls ``restart()`` first (which resets, or raises RangeIgnored).
Fetch = Callable[[LayerFile, int, int, Callable[[memoryview], None], Callable[[], None]], None]

SEGMENT_BYTES = 64 * 1024 * 1024     # a blob larger than this is fetched in parallel segments
MAP_FLUSH_BYTES = 2 * 1024 * 1024    # progress map rewritten at least this often per segment (as the Hub engine)
HASH_BLOCK = 8 * 1024 * 1024


class RangeIgnored(Exception):
    """The source sent the whole blob to a segment request: fetch that blob as one stream."""


@dataclass
class InstallResult:
    name: str
    path: str
    revision: str | None
    commit: str | None
    files: int
    bytes_total: int
    bytes_transferred: int
    kept_files: int
    verified: bool
    manifest_digest: str
    fetched_files: list[str] = field(default_factory=list)
    chat_template: str | None = None
    repaired: list[str] = field(default_factory=list)     # recorded as verified, found damaged: fetched again
    hashed_files: int = 0                                 # files whose hash was checked in this run


def partial_dir(model_dir: Path) -> Path:
    return paths.partial_dir(model_dir) / PARTIAL_SUBDIR


class _Blob:
    """One blob being fetched into ``<hex>.tmp`` (preallocated, data at its final offsets) in
    segments, with ``<hex>.tmp.json`` saying which segments are complete and how far each one
    in flight got (rewritten after the data it describes, so a kill -9 loses at most
    MAP_FLUSH_BYTES per segment). Complete segments are hashed in order as they finish; the
    digest is checked once all are there, then the file is renamed ``<hex>`` (verified)."""

    def __init__(self, layer: LayerFile, pdir: Path, segment_bytes: int, where: str) -> None:
        self.layer = layer
        self.where = where
        self.ready = pdir / layer.hex
        self.tmp = pdir / f"{layer.hex}.tmp"
        self.map_path = pdir / f"{layer.hex}.tmp.json"
        self.segment = max(1, segment_bytes)
        self.lock = threading.Lock()
        self.hash_lock = threading.Lock()
        self.done: set[int] = set()
        self.written: dict[int, int] = {}
        self.unsaved: dict[int, int] = {}
        self.hasher = hashlib.sha256()
        self.hashed = 0                    # segments hashed (a contiguous prefix)
        self.fd = -1
        self.verified = False

    @property
    def nseg(self) -> int:
        return max(1, -(-self.layer.size // self.segment))

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.segment
        return start, min(self.layer.size, start + self.segment)

    def present(self) -> int:
        return sum(self.bounds(i)[1] - self.bounds(i)[0] for i in self.done) + sum(self.written.values())

    def open(self) -> list[int]:
        """Open (resuming what a previous run left); the segments still to fetch."""
        try:
            if self.ready.stat().st_size == self.layer.size:
                self.verified = True
                return []
        except FileNotFoundError:
            pass
        try:
            doc = json.loads(self.map_path.read_text())
            if (doc.get("size") == self.layer.size and doc.get("segment") and self.tmp.is_file()
                    and self.tmp.stat().st_size == self.layer.size):
                self.segment = int(doc["segment"])
                self.done = {int(i) for i in doc.get("done", [])}
                self.written = {int(k): int(v) for k, v in doc.get("written", {}).items() if int(k) not in self.done}
            else:
                raise ValueError("stale map")
        except (OSError, ValueError, TypeError, KeyError):
            self.done, self.written = set(), {}
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        if os.fstat(self.fd).st_size != self.layer.size:
            os.ftruncate(self.fd, self.layer.size)
        self.save_map()
        return [i for i in range(self.nseg) if i not in self.done]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def save_map(self) -> None:
        with self.lock:
            doc = {"size": self.layer.size, "segment": self.segment, "done": sorted(self.done),
                   "written": {str(k): v for k, v in self.written.items()}}
        atomic_write_json(self.map_path, doc)

    def reset_to_one_stream(self) -> None:
        with self.lock:
            self.segment = max(1, self.layer.size)
            self.done, self.written, self.unsaved = set(), {}, {}
            self.hasher, self.hashed = hashlib.sha256(), 0

    def fetch_segment(self, index: int, fetch: Fetch, counter: Counters) -> None:
        layer = self.layer
        seg_start, seg_end = self.bounds(index)

        def sink(view: memoryview) -> None:
            with self.lock:
                offset = seg_start + self.written.get(index, 0)
            if offset + len(view) > seg_end:
                raise IntegrityError("the source sent more bytes than the layer's size", f"{layer.path} ({layer.digest})",
                                     "the registry or layout is damaged; nothing was installed")
            os.pwrite(self.fd, view, offset)
            with self.lock:
                self.written[index] = self.written.get(index, 0) + len(view)
                self.unsaved[index] = self.unsaved.get(index, 0) + len(view)
                flush = self.unsaved[index] >= MAP_FLUSH_BYTES
                if flush:
                    self.unsaved[index] = 0
            counter.add(done=len(view), downloaded=len(view))
            counter.report()
            if flush:
                self.save_map()

        def restart() -> None:
            if self.nseg > 1:
                raise RangeIgnored()
            with self.lock:
                self.written[index] = 0

        def once() -> None:
            with self.lock:
                have = self.written.get(index, 0)
            if seg_start + have < seg_end:
                fetch(layer, seg_start + have, seg_end, sink, restart)
            with self.lock:
                have = self.written.get(index, 0)
            if seg_start + have != seg_end:
                raise Retry(f"{have} of {seg_end - seg_start} bytes")

        with_retries(once, f"fetching {layer.path}", self.where,
                     on_retry=lambda why: counter.report(message=f"retrying {layer.path}: {why}"))
        with self.lock:
            self.done.add(index)
            self.written.pop(index, None)
            self.unsaved.pop(index, None)
        self.save_map()
        self.advance_hash(block=False)

    def advance_hash(self, block: bool) -> None:
        """Hash the complete segments that follow the hashed prefix (one thread at a time)."""
        if not self.hash_lock.acquire(blocking=block):
            return
        try:
            while True:
                with self.lock:
                    if self.hashed >= self.nseg or self.hashed not in self.done:
                        return
                    index = self.hashed
                start, end = self.bounds(index)
                while start < end:
                    data = os.pread(self.fd, min(HASH_BLOCK, end - start), start)
                    if not data:
                        raise IntegrityError("a partial blob shrank while it was hashed", str(self.tmp),
                                             "run the same command again")
                    self.hasher.update(data)
                    start += len(data)
                with self.lock:
                    self.hashed += 1
        finally:
            self.hash_lock.release()

    def finish(self) -> Path:
        """Check the digest of the complete blob; rename it ``<hex>``."""
        if self.verified:
            return self.ready
        self.advance_hash(block=True)
        if self.hashed != self.nseg or self.hasher.hexdigest() != self.layer.hex:
            self.close()
            self.tmp.unlink(missing_ok=True)
            self.map_path.unlink(missing_ok=True)
            raise IntegrityError("a blob does not match its digest", f"{self.layer.path} ({self.layer.digest})",
                                 "the registry or layout is damaged or lying; nothing was installed, "
                                 "the blob was discarded: run the same command again or fix the source")
        os.fsync(self.fd)
        self.close()
        os.replace(self.tmp, self.ready)
        self.map_path.unlink(missing_ok=True)
        self.verified = True
        return self.ready


def _fetch_all(blobs: list[_Blob], fetch: Fetch, counter: Counters, workers: int) -> None:
    """Every missing segment of every blob, ``workers`` at a time; a blob whose source ignores
    Range is fetched again as one stream. The first error is raised once all have stopped
    (an integrity error before any other: it says more)."""
    tasks = []
    for blob in blobs:
        missing = blob.open()
        counter.add(done=blob.layer.size if blob.verified else blob.present())
        tasks += [(blob, i) for i in missing]
    counter.report(force=True)
    errors: list[BaseException] = []
    while tasks:
        ignored: list[_Blob] = []
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
            futures = [(blob, pool.submit(blob.fetch_segment, i, fetch, counter)) for blob, i in tasks]
            for blob, fut in futures:
                try:
                    fut.result()
                except RangeIgnored:
                    if not any(b is blob for b in ignored):
                        ignored.append(blob)
                except BaseException as exc:  # noqa: BLE001 - raised below, after every worker stopped
                    errors.append(exc)
        # Only once no worker touches them: those blobs start again as one stream each.
        for blob in ignored:
            blob.reset_to_one_stream()
        tasks = [(blob, 0) for blob in ignored]
    if errors:
        raise next((e for e in errors if isinstance(e, IntegrityError)), errors[0])


def install(root: Path, repo_id: str, artifact: Artifact, fetch: Fetch, where: str, workers: int = 8,
            wait: bool = True, extra: dict | None = None, segment_bytes: int | None = None,
            progress: ProgressCallback | None = None) -> InstallResult:
    """Install ``artifact``'s files as the managed model ``repo_id``; see the module doc."""
    ref = names.parse_model_name(repo_id)
    root = Path(root).absolute()
    local.ensure_root(root)
    model_dir = root / ref.dir_name
    for f in artifact.files:
        names.safe_repo_path(model_dir, f.path)
    def waiting(who: str) -> None:
        if progress is not None:
            progress(ProgressUpdate(0, 0, 0, 0, 0, message=f"waiting for the lock held by {who}"))

    with locking.model_lock(root, ref.dir_name, "pull", wait=wait, on_wait=waiting):
        old = manifests.read_manifest(model_dir) if model_dir.exists() else None
        recorded = {f.path: f for f in (old.files if old else [])}
        wanted = [manifests.ManifestFile(f.path, f.size, f.hex, f.git_sha1) for f in artifact.files]
        verdicts = ondisk.check_all([(names.safe_repo_path(model_dir, mf.path), mf, recorded.get(mf.path))
                                     for mf in wanted], rehash=False)
        keep = {v.path for v in verdicts if v.ok}
        repaired = sorted(v.path for v, mf in zip(verdicts, wanted)
                          if not v.ok and v.path in recorded and recorded[v.path].sha256 == mf.sha256)
        to_fetch = [f for f in artifact.files if f.path not in keep]
        pdir = partial_dir(model_dir)
        pdir.mkdir(parents=True, exist_ok=True)
        unique: dict[str, LayerFile] = {}
        for f in to_fetch:
            unique.setdefault(f.digest, f)
        needed = 0
        for layer in unique.values():
            try:
                have = layer.size if (pdir / layer.hex).stat().st_size == layer.size else 0
            except FileNotFoundError:
                have = 0
            if not have and (pdir / f"{layer.hex}.tmp").exists():
                have = layer.size      # preallocated by an earlier run: its space is taken already
            needed += layer.size - have
        free = local.free_bytes(model_dir)
        if needed + DISK_MARGIN_BYTES > free:
            raise DiskSpaceError(f"not enough disk space: {needed} bytes needed (+{DISK_MARGIN_BYTES} margin), "
                                 f"{free} free", str(model_dir), "free space or install to another --root")
        kept_bytes = sum(f.size for f in artifact.files if f.path in keep)
        counter = Counters(progress, artifact.bytes_total, kept_bytes, len(artifact.files), len(keep))
        pending = [_Blob(layer, pdir, segment_bytes or SEGMENT_BYTES, where) for layer in unique.values()]
        try:
            _fetch_all(pending, fetch, counter, workers)
            blobs = {blob.layer.digest: blob.finish() for blob in pending}
            counter.add(files=len(to_fetch))
            counter.report(force=True)
        except OSError as exc:
            import errno

            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskSpaceError("no space left on device", str(pdir),
                                     "free space and run the same command again; verified blobs are kept") from exc
            raise
        finally:
            for blob in pending:
                blob.close()
        # Every blob is verified: give them their names.
        for f in to_fetch:
            target = names.safe_repo_path(model_dir, f.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.oci-{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            os.link(blobs[f.digest], tmp)
            os.replace(tmp, target)
        if old is not None:
            from vmm.core.hub.pull import _remove_dropped     # the Hub pull's rule, shared

            _remove_dropped(model_dir, old, {f.path for f in artifact.files})
        now = time.time()
        files = []
        by_path = {v.path: v for v in verdicts}
        for mf in wanted:
            target = names.safe_repo_path(model_dir, mf.path)
            ident = by_path[mf.path].identity if mf.path in keep else ondisk.identity_of(target)
            files.append(ondisk.with_identity(mf, ident, now))
        manifest = manifests.Manifest(repo_id=ref.repo_id, revision=artifact.revision, commit=artifact.commit,
                                      quant=artifact.quant, files=files, pulled_at=now,
                                      extra={**(old.extra if old else {}), "oci": {**(extra or {}),
                                             "manifest_digest": artifact.manifest_digest,
                                             "created": artifact.annotations.get(ANN_CREATED)}})
        if old is not None:
            manifest.previous_revisions = list(old.previous_revisions)
            if old.commit and old.commit != artifact.commit:
                manifest.previous_revisions.append(old.commit)
        manifests.write_manifest(model_dir, manifest, carry_usage=True)
        shutil.rmtree(pdir, ignore_errors=True)
        try:
            paths.partial_dir(model_dir).rmdir()
        except OSError:
            pass
        if progress is not None:
            progress(ProgressUpdate(artifact.bytes_total, artifact.bytes_total, counter.bytes_downloaded,
                                    len(files), len(files), finished=True))
        template = _template(model_dir, ref.repo_id)
        manifests.touch_usage(model_dir, "pull")
    return InstallResult(name=ref.repo_id, path=str(model_dir), revision=artifact.revision, commit=artifact.commit,
                         files=len(files), bytes_total=artifact.bytes_total, bytes_transferred=counter.bytes_downloaded,
                         kept_files=len(keep), verified=True, manifest_digest=artifact.manifest_digest,
                         fetched_files=[f.path for f in to_fetch], chat_template=template, repaired=repaired,
                         hashed_files=len(to_fetch) + sum(1 for v in verdicts if v.ok and v.hashed))


def _template(model_dir: Path, repo_id: str) -> str | None:
    """Pull's last step (the family chat template for a model without one), as `vmm pull` does."""
    from vmm.core.model import templates

    try:
        setup = templates.after_pull(model_dir, repo_id, templates.operator_template(model_dir))
    except VmmError as exc:
        return f"unresolved ({exc.what})"
    return setup.source if setup.action == "kept" else f"family {setup.family}"
