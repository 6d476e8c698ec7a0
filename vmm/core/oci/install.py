"""Installing a model artifact into the models root: verified blobs first, names last.

Shared by ``vmm pull oci://`` and ``vmm import`` of an OCI layout. Under the model's lock:

1. files already in place whose recorded (or re-hashed) sha256 is the layer digest are kept;
2. every other blob is fetched into ``<model>/.vmm/partial/oci/<hex>.tmp`` (a rerun resumes it:
   the bytes present are hashed again and the rest asked for by offset), its sha256 and size
   checked, then renamed to ``<hex>`` (verified, kept across runs);
3. only when every blob is verified are they linked to their file names (atomic rename each),
   files the old manifest had and the artifact does not are removed, and the manifest is
   written last (with each file's identity, so ``vmm check`` trusts it without re-hashing).

A blob that does not match its digest is deleted and ends the run with exit 5; nothing
unverified ever gets a file name, nothing verified is lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import names
from vmm.core.errors import DiskSpaceError, IntegrityError, VmmError
from vmm.core.hub import ondisk
from vmm.core.hub.connection import Retry
from vmm.core.oci.artifact import Artifact, LayerFile
from vmm.core.oci.registry import with_retries
from vmm.core.store import local, locking, manifests, paths

DISK_MARGIN_BYTES = 64 * 1024 * 1024
PARTIAL_SUBDIR = "oci"

# fetch(layer, start, sink, restart): stream the blob's bytes from ``start`` into ``sink``;
# raise Retry for a transient failure (the installer resumes from what arrived).
Fetch = Callable[[LayerFile, int, Callable[[memoryview], None], Callable[[], None]], None]


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


class _Counter:
    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.bytes = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n


def _fetch_blob(layer: LayerFile, pdir: Path, fetch: Fetch, counter: _Counter, where: str) -> Path:
    """The verified blob at ``pdir/<hex>``, fetched (resuming ``<hex>.tmp``) when not there yet."""
    ready = pdir / layer.hex
    try:
        if ready.stat().st_size == layer.size:
            return ready
    except FileNotFoundError:
        pass
    tmp = pdir / f"{layer.hex}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "r+b", buffering=0) as handle:
            state = {"hasher": hashlib.sha256(), "written": 0}
            present = os.fstat(handle.fileno()).st_size
            if present > layer.size:
                handle.truncate(0)
                present = 0
            while state["written"] < present:      # hash what an earlier run left, resume after it
                chunk = handle.read(min(8 << 20, present - state["written"]))
                if not chunk:
                    break
                state["hasher"].update(chunk)
                state["written"] += len(chunk)
            handle.seek(state["written"])
            handle.truncate(state["written"])

            def sink(view: memoryview) -> None:
                if state["written"] + len(view) > layer.size:
                    raise IntegrityError("the source sent more bytes than the layer's size", where,
                                         "the registry or layout is damaged; nothing was installed")
                handle.write(view)
                state["hasher"].update(view)
                state["written"] += len(view)
                counter.add(len(view))

            def restart() -> None:
                handle.seek(0)
                handle.truncate(0)
                state["hasher"], state["written"] = hashlib.sha256(), 0

            def once() -> None:
                handle.seek(state["written"])
                if state["written"] < layer.size:
                    fetch(layer, state["written"], sink, restart)
                if state["written"] != layer.size:
                    raise Retry(f"{state['written']} of {layer.size} bytes")

            with_retries(once, f"fetching {layer.path}", where)
            if state["hasher"].hexdigest() != layer.hex:
                handle.truncate(0)
                tmp.unlink(missing_ok=True)
                raise IntegrityError("a blob does not match its digest", f"{layer.path} ({layer.digest})",
                                     "the registry or layout is damaged or lying; nothing was installed, "
                                     "the blob was discarded: run the same command again or fix the source")
            os.fsync(handle.fileno())
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError("no space left on device", str(tmp), "free space and run the same command again") from exc
        raise
    os.replace(tmp, ready)
    return ready


def install(root: Path, repo_id: str, artifact: Artifact, fetch: Fetch, where: str, workers: int = 8,
            wait: bool = True, extra: dict | None = None) -> InstallResult:
    """Install ``artifact``'s files as the managed model ``repo_id``; see the module doc."""
    ref = names.parse_model_name(repo_id)
    root = Path(root).absolute()
    local.ensure_root(root)
    model_dir = root / ref.dir_name
    for f in artifact.files:
        names.safe_repo_path(model_dir, f.path)
    with locking.model_lock(root, ref.dir_name, "pull", wait=wait):
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
            have = 0
            for candidate in (pdir / layer.hex, pdir / f"{layer.hex}.tmp"):
                try:
                    have = max(have, min(candidate.stat().st_size, layer.size))
                except FileNotFoundError:
                    pass
            needed += layer.size - have
        free = local.free_bytes(model_dir)
        if needed + DISK_MARGIN_BYTES > free:
            raise DiskSpaceError(f"not enough disk space: {needed} bytes needed (+{DISK_MARGIN_BYTES} margin), "
                                 f"{free} free", str(model_dir), "free space or install to another --root")
        counter = _Counter()
        blobs: dict[str, Path] = {}
        if unique:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
                futures = {d: pool.submit(_fetch_blob, layer, pdir, fetch, counter, where)
                           for d, layer in unique.items()}
                first_error: BaseException | None = None
                for d, fut in futures.items():
                    try:
                        blobs[d] = fut.result()
                    except BaseException as exc:  # noqa: BLE001 - the first one is raised after all finish
                        if first_error is None or (isinstance(exc, IntegrityError)
                                                   and not isinstance(first_error, IntegrityError)):
                            first_error = exc
                if first_error is not None:
                    raise first_error
        # Every blob is verified: give them their names.
        for f in to_fetch:
            target = names.safe_repo_path(model_dir, f.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.oci-{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            os.link(blobs[f.digest], tmp)
            os.replace(tmp, target)
        if old is not None:
            new_paths = {f.path for f in artifact.files}
            for f in old.files:
                if f.path not in new_paths:
                    try:
                        names.safe_repo_path(model_dir, f.path).unlink()
                    except (OSError, IntegrityError):
                        pass
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
                                             "manifest_digest": artifact.manifest_digest}})
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
        template = _template(model_dir, ref.repo_id)
        manifests.touch_usage(model_dir, "pull")
    return InstallResult(name=ref.repo_id, path=str(model_dir), revision=artifact.revision, commit=artifact.commit,
                         files=len(files), bytes_total=artifact.bytes_total, bytes_transferred=counter.bytes,
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
