"""The pull: Hub repo -> verified model folder under the models root.

Under the model's lock: resolve the revision to a commit and list its files
(:mod:`vmm.core.hub.client`), choose the files (:mod:`vmm.core.hub.selection`), keep what is
already on disk and verified, link identical files found on this host, fetch the rest
(:mod:`vmm.core.hub.transfer`), write the manifest last, then set up the chat template.
docs/pull.md has the operator's view.
"""

from __future__ import annotations

import dataclasses

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import hashing, names, settings
from vmm.core.errors import DiskSpaceError, IntegrityError, NotFoundError, RemoteError, UsageError, VmmError
from vmm.core.hub import ondisk
from vmm.core.hub.client import RemoteFile, fetch_snapshot
from vmm.core.hub.selection import select_files
from vmm.core.hub.transfer import (  # noqa: F401 - ProgressUpdate/ProgressCallback are part of the API
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WORKERS,
    Counters,
    Engine,
    ProgressCallback,
    ProgressUpdate,
    make_jobs,
)
from vmm.core.store import local, locking, manifests, paths

DISK_MARGIN_BYTES = 64 * 1024 * 1024
REUSE_MIN_BYTES = 1024 * 1024    # smaller files are cheaper to fetch than to search the root for


@dataclass
class PullResult:
    name: str
    path: str
    revision: str                 # the commit sha
    files: int
    bytes_downloaded: int
    bytes_total: int
    verified: bool
    kept_files: int = 0
    fetched_files: list[str] = field(default_factory=list)
    previous_revision: str | None = None
    quant: str | None = None
    reused_files: list[str] = field(default_factory=list)   # linked from the HF cache or the root
    chat_template: str | None = None     # where vLLM's template comes from after the pull
    chat_template_written: bool = False  # vmm wrote its family template (the repo has none)
    repaired: list[str] = field(default_factory=list)   # damaged on disk (after a verified pull): fetched again
    hashed_files: int = 0                # files whose hash was checked in this run

    def document(self) -> dict:
        """`vmm pull --json`: the contract's keys (docs/contract.md) and the rest of the story."""
        doc = dataclasses.asdict(self)
        doc.pop("fetched_files")
        return doc


# --------------------------------------------------------------------------- the pull

@dataclass
class _Pull:
    """One pull's inputs, resolved."""

    ref: names.ModelRef
    model_dir: Path
    want_revision: str | None
    include: list[str] | None
    exclude: list[str] | None
    all_files: bool
    offline: bool
    workers: int
    chunk_size: int
    progress: ProgressCallback | None
    endpoint: str | None
    token: str | None
    verify: bool = False               # re-hash every file, whatever its recorded identity
    stall_timeout_s: float | None = None   # None: VMM_STALL_TIMEOUT (settings)
    operator_template: bool = False    # `vmm template --set` in force: the original is kept aside

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress(ProgressUpdate(0, 0, 0, 0, 0, message=message))


def download_model_to_path(model_name: str, model_path: Path | None = None, *, root: Path | None = None,
                           include: list[str] | None = None, exclude: list[str] | None = None,
                           revision: str | None = None, all_files: bool = False, offline: bool | None = None,
                           wait: bool = True, workers: int = DEFAULT_WORKERS,
                           chunk_size: int = DEFAULT_CHUNK_SIZE, progress: ProgressCallback | None = None,
                           endpoint: str | None = None, token: str | None = None,
                           verify: bool = False, stall_timeout_s: float | None = None) -> PullResult:
    """Pull ``model_name`` (``org/name[@rev][:QUANT]``) into ``model_path`` (default
    ``<root>/org--name``): resumable, parallel, verified; manifest written last. ``verify``
    re-hashes every file already on disk (else only those whose identity changed).
    ``stall_timeout_s``: seconds a connection may send nothing before it is dropped and its
    range resumed elsewhere (default ``VMM_STALL_TIMEOUT``, 10 s)."""
    ref = names.parse_model_name(model_name)
    root = settings.models_root(root)
    if model_path is None:
        model_path = names.get_model_path_from_name(ref.repo_id, root)
    model_dir = Path(model_path)
    want_revision = revision or ref.revision
    if revision and ref.revision and revision != ref.revision:
        raise UsageError("two different revisions given", f"@{ref.revision} and --revision {revision}",
                         "give one")
    offline = settings.offline() if offline is None else offline
    if workers < 1 or workers > 64:
        raise UsageError("--workers must be between 1 and 64", str(workers), "pick e.g. 8")
    if chunk_size < 64 * 1024:
        raise UsageError("--chunk-size must be at least 64KiB", str(chunk_size), "pick e.g. 16MiB")
    local.ensure_root(root)
    job = _Pull(ref, model_dir, want_revision, include, exclude, all_files, offline, workers, chunk_size,
                progress, endpoint, token, verify, stall_timeout_s)

    from vmm.core.model import templates

    with locking.model_lock(root, model_dir.name, "pull", wait=wait,
                            on_wait=lambda who: job.note(f"waiting for the lock held by {who}")):
        operator_text = templates.operator_template(model_dir) if model_dir.is_dir() else None
        job.operator_template = operator_text is not None and (model_dir / templates.ORIGINAL_KEPT).is_file()
        result = _offline_result(job) if offline else _pull_locked(job)
        try:
            setup = templates.after_pull(model_dir, ref.repo_id, operator_text)
        except VmmError as exc:
            # The files are what the Hub holds and verified; a template that cannot be
            # resolved (a broken config or GGUF header upstream) is for `vmm check` to report.
            result.chat_template = f"unresolved ({exc.what})"
        else:
            result.chat_template = setup.source if setup.action == "kept" else f"family {setup.family}"
            result.chat_template_written = setup.action == "written"
        manifests.touch_usage(model_dir, "pull")
        return result


def _on_disk(job: _Pull, path: str) -> Path:
    """Where a repo file's bytes are: the Hub's chat template may be kept aside by
    `vmm template --set` (the operator's template takes its place)."""
    from vmm.core.model import templates

    if job.operator_template and path == templates.CHAT_TEMPLATE_FILE:
        return job.model_dir / templates.ORIGINAL_KEPT
    return names.safe_repo_path(job.model_dir, path)


def _check_local(job: _Pull, files: list, recorded: dict[str, manifests.ManifestFile]
                 ) -> tuple[dict[str, ondisk.Verdict], dict[str, str]]:
    """Verdicts for the files already on disk, and the damaged ones among those vmm had
    verified before ({path: problem}); each damaged file gets a note."""
    verdicts = ondisk.check_all([(_on_disk(job, f.path), f, recorded.get(f.path)) for f in files], job.verify)
    damaged = {}
    for f, v in zip(files, verdicts):
        old = recorded.get(f.path)
        if not v.ok and old is not None and hashing.expected_digest(old) == hashing.expected_digest(f):
            damaged[f.path] = v.problem or "damaged"
            job.note(f"repairing {f.path}: {damaged[f.path]}; fetching it again")
    return {v.path: v for v in verdicts}, damaged


def _pull_locked(job: _Pull) -> PullResult:
    ref, model_dir = job.ref, job.model_dir
    old = manifests.read_manifest(model_dir) if model_dir.exists() else None
    endpoint = (job.endpoint or settings.hub_endpoint()).rstrip("/")
    token = job.token if job.token is not None else settings.hub_token()
    snapshot = fetch_snapshot(ref.repo_id, job.want_revision or "main", endpoint=endpoint, token=token)
    selected, quant = select_files(snapshot.files, ref.quant, job.include, job.exclude, job.all_files,
                                   ref.repo_id)
    if not selected:
        raise NotFoundError("no files to pull", f"{ref.repo_id}@{snapshot.commit[:12]}",
                            "check --include/--exclude or the quantization")
    targets = {rf.path: names.safe_repo_path(model_dir, rf.path) for rf in selected}
    recorded = {f.path: f for f in (old.files if old else [])}
    verdicts, repaired = _check_local(job, selected, recorded)
    keep = [rf for rf in selected if verdicts[rf.path].ok]
    fetch = [rf for rf in selected if not verdicts[rf.path].ok]
    reused = _reuse_local_copies(ref.repo_id, snapshot.commit, fetch, targets, model_dir)
    bytes_total = sum(rf.size for rf in selected)
    counters = Counters(job.progress, bytes_total, sum(rf.size for rf in keep), len(selected), len(keep))
    to_fetch = [rf for rf in fetch if rf.path not in reused]
    if to_fetch:
        engine = Engine(snapshot, endpoint, token, job.workers, job.chunk_size, counters,
                        stall_timeout_s=job.stall_timeout_s)
        _fetch(engine, to_fetch, targets, model_dir)
    if old is not None:
        _remove_dropped(model_dir, old, {rf.path for rf in snapshot.files})
    identities = _final_identities(job, selected, verdicts)
    manifest, previous = _new_manifest(job, snapshot.commit, quant, selected, old, identities)
    manifests.write_manifest(model_dir, manifest, carry_usage=True)   # uses recorded meanwhile stay
    _cleanup_partial(model_dir)
    downloaded = counters.bytes_downloaded
    if job.progress is not None:
        job.progress(ProgressUpdate(bytes_total, bytes_total, downloaded, len(selected), len(selected),
                                    finished=True))
    return PullResult(name=ref.repo_id, path=str(model_dir), revision=snapshot.commit, files=len(selected),
                      bytes_downloaded=downloaded, bytes_total=bytes_total,
                      verified=all(hashing.expected_digest(rf)[0] != "size" for rf in selected),
                      kept_files=len(keep), fetched_files=[rf.path for rf in to_fetch],
                      previous_revision=previous, quant=quant, reused_files=sorted(reused),
                      repaired=sorted(repaired), hashed_files=_hashed(verdicts, fetch))


def _hashed(verdicts: dict[str, ondisk.Verdict], fetched: list) -> int:
    """Files whose hash was checked in this run (fetched, reused or re-hashed on disk)."""
    return len(fetched) + sum(1 for v in verdicts.values() if v.ok and v.hashed)


def _final_identities(job: _Pull, files: list, verdicts: dict[str, ondisk.Verdict]) -> dict[str, tuple | None]:
    """The identity of every file as verified, read before the model is called complete.

    A file kept at the start must still be the file that was checked then; one that changed
    during the pull is checked again (exit 5 if it no longer matches). Fetched and reused
    files were hashed by the engine or the storage helpers just now."""
    out: dict[str, tuple | None] = {}
    for f in files:
        where, v = _on_disk(job, f.path), verdicts[f.path]
        if not v.ok and where != names.safe_repo_path(job.model_dir, f.path):
            out[f.path] = None      # fetched to the top level; the template step moves it aside
            continue
        now = ondisk.identity_of(where)
        if v.ok and now != v.identity:
            again = ondisk.check(where, f, None, rehash=True)
            if not again.ok:
                raise IntegrityError(f"a file changed during the pull ({again.problem})", f.path,
                                     "run the same command again to repair it")
            now = again.identity
        out[f.path] = now
    return out


def _fetch(engine: Engine, fetch: list[RemoteFile], targets: dict[str, Path], model_dir: Path) -> None:
    """Check the disk, open the partial files (resuming what is there) and run the engine."""
    model_dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(fetch, targets, paths.partial_dir(model_dir), engine.chunk_size)
    needed = sum(rf.size for rf in fetch) - sum(job.load() for job in jobs)
    free = local.free_bytes(model_dir)
    if needed + DISK_MARGIN_BYTES > free:
        raise DiskSpaceError(
            f"not enough disk space: {needed} bytes needed (+{DISK_MARGIN_BYTES} margin), {free} free",
            str(model_dir), "free space or pull to another --root")
    try:
        for job in jobs:
            job.open()
            engine.counters.add(done=job.present())
        engine.counters.report(force=True)
        engine.run(jobs)
    finally:
        for job in jobs:
            job.close()


def _remove_dropped(model_dir: Path, old: manifests.Manifest, new_paths: set[str]) -> None:
    """Files of the previous revision that the new one no longer has."""
    for f in old.files:
        if f.path not in new_paths:
            try:
                names.safe_repo_path(model_dir, f.path).unlink()
            except (OSError, IntegrityError):
                pass


def _new_manifest(job: _Pull, commit: str, quant: str | None, selected: list[RemoteFile],
                  old: manifests.Manifest | None, identities: dict[str, tuple | None]
                  ) -> tuple[manifests.Manifest, str | None]:
    """The manifest of this pull (usage, pin and extras carried over) and the previous commit."""
    now = time.time()
    files = [ondisk.with_identity(manifests.ManifestFile(rf.path, rf.size, rf.sha256, rf.git_sha1),
                                  identities.get(rf.path), now) for rf in selected]
    manifest = manifests.Manifest(repo_id=job.ref.repo_id, revision=job.want_revision or "main", commit=commit,
                                  quant=quant, files=files, pulled_at=now)
    previous = None
    if old is not None:
        manifest.last_used, manifest.use_counts = old.last_used, dict(old.use_counts)
        manifest.pinned, manifest.extra = old.pinned, dict(old.extra)
        manifest.previous_revisions = list(old.previous_revisions)
        if old.commit and old.commit != commit:
            manifest.previous_revisions.append(old.commit)
            previous = old.commit
    return manifest, previous


def _reuse_local_copies(repo_id: str, commit: str, fetch: list[RemoteFile], targets: dict[str, Path],
                        model_dir: Path) -> dict[str, str]:
    """Files already on this host with the right hash: the Hugging Face cache (any revision
    sharing the blob) or another managed model of the root (LFS files, by sha256). Each
    candidate is re-hashed by the storage helpers before it is hardlinked (or copied) into
    place, so only bytes that are what the Hub lists are reused. {path: "link"|"copy"}."""
    if not fetch:
        return {}
    from vmm.core.store import adopt, dedup

    done: dict[str, str] = {}
    try:
        cached = adopt.find_in_hf_cache(repo_id, commit, fetch)
    except Exception:  # noqa: BLE001 - a broken cache is only a missed shortcut
        cached = {}
    root = model_dir.parent
    for rf in fetch:
        src = cached.get(rf.path)
        if src is None and rf.sha256 and rf.size >= REUSE_MIN_BYTES:
            try:
                src = dedup.find_verified_blob(root, rf.sha256, rf.size)
            except Exception:  # noqa: BLE001
                src = None
        if src is None:
            continue
        try:
            done[rf.path] = dedup.link_or_copy(src, targets[rf.path])
        except OSError:
            continue
    return done


def _cleanup_partial(model_dir: Path) -> None:
    partial = paths.partial_dir(model_dir)
    if not partial.is_dir():
        return
    for dirpath, _dirs, files in os.walk(partial, topdown=False):
        for name in files:
            if name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _offline_result(job: _Pull) -> PullResult:
    """No network: succeed only when every file of the manifest is on disk and verified
    (files whose identity changed are hashed again; ``verify`` hashes all)."""
    ref, model_dir = job.ref, job.model_dir
    old = manifests.read_manifest(model_dir) if model_dir.exists() else None
    hint = "run without --offline / HF_HUB_OFFLINE to download it"
    if old is None:
        raise RemoteError("offline and the model is not in the models root", ref.repo_id, hint)
    if job.want_revision and job.want_revision not in (old.revision, old.commit):
        raise RemoteError("offline and the model holds another revision",
                          f"{ref.repo_id}@{job.want_revision} (have {old.revision})", hint)
    verdicts = ondisk.check_all([(_on_disk(job, f.path), f, f) for f in old.files], job.verify)
    for v in verdicts:
        if not v.ok:
            what = "incomplete" if v.problem == "missing" or (v.problem or "").startswith("size") else "damaged"
            raise RemoteError(f"offline and the model is {what}", f"{ref.repo_id}: {v.path} {v.problem}",
                              "run without --offline / HF_HUB_OFFLINE to repair it")
    if any(v.hashed for v in verdicts):     # record what was verified now
        now = time.time()
        old.files = [ondisk.with_identity(f, v.identity, now) if v.hashed else f
                     for f, v in zip(old.files, verdicts)]
        manifests.write_manifest(model_dir, old, carry_usage=True)
    return PullResult(name=ref.repo_id, path=str(model_dir), revision=old.commit or "", files=len(old.files),
                      bytes_downloaded=0, bytes_total=old.total_bytes,
                      verified=all(hashing.expected_digest(f)[0] != "size" for f in old.files),
                      kept_files=len(old.files), quant=old.quant,
                      hashed_files=sum(1 for v in verdicts if v.hashed))
