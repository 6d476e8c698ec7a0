"""The four OCI commands: ``push``, ``pull oci://``, ``export`` and ``import`` of a layout.

- ``push(root, name, target, ...)``: a managed model's files (sha256 from its manifest, no
  re-hash of files whose identity is unchanged) as a ModelPack artifact; blobs the registry
  has are skipped (HEAD), the rest uploaded in parallel, the manifest PUT last.
- ``pull(root, reference, ...)``: manifest (checked against ``@digest``), config, then the
  blobs by Range through :mod:`vmm.core.oci.install`.
- ``export(root, name, target, tag)``: an OCI image layout directory or ``.tar``.
- ``import_layout(root, source, ...)``: a layout (directory or tar) installed like a pull.
"""

from __future__ import annotations

import datetime
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmm.core import hashing, names
from vmm.core.errors import IntegrityError, UsageError
from vmm.core.hub import ondisk
from vmm.core.hub.transfer import ProgressCallback
from vmm.core.oci import artifact as art
from vmm.core.oci import install, layout, reference
from vmm.core.oci.registry import Registry, with_retries
from vmm.core.store import local, locking, manifests
from vmm.core.store.adopt import ImportResult

DEFAULT_WORKERS = 8


@dataclass
class PushResult:
    name: str
    reference: str
    digest: str
    files: int
    layers_uploaded: int
    layers_skipped: int
    layers_mounted: int
    bytes_uploaded: int
    bytes_total: int


@dataclass
class ExportResult:
    name: str
    path: str
    format: str          # "oci-layout" or "oci-archive"
    tag: str
    digest: str
    files: int
    bytes_total: int


@dataclass
class OciImportResult(ImportResult):
    """``vmm import`` of a layout: the keys of a directory import, plus the artifact's digest."""

    digest: str = ""
    kept_files: int = 0


@dataclass
class OciPullResult:
    """``vmm pull oci://... --json``: the contract's pull keys, plus the artifact's reference."""

    name: str
    path: str
    revision: str | None
    files: int
    bytes_downloaded: int
    bytes_total: int
    verified: bool
    reference: str
    digest: str
    commit: str | None
    kept_files: int
    chat_template: str | None
    repaired: list[str]
    hashed_files: int


def _check_workers(workers: int) -> None:
    if workers < 1 or workers > 64:
        raise UsageError("--workers must be between 1 and 64", str(workers), "pick e.g. 8")


def model_artifact(root: Path, name: str) -> tuple[art.Artifact, dict[str, Path], manifests.Manifest]:
    """The artifact of a managed model and where each of its files is. A file whose identity
    is unchanged since it was verified keeps its recorded sha256 (nothing re-hashed); the others
    (and files the Hub listed by git sha1 only) are hashed, and must match what was recorded."""
    model = local.locate_model(name, root)
    manifest = manifests.read_manifest(model.path)
    if manifest is None:
        raise UsageError("not a managed model (no manifest)", str(model.path),
                         "`vmm import` it first so vmm knows its hashes")
    if not manifest.files:
        raise UsageError("the model's manifest lists no files", str(model.path), "pull it again")
    sources = {f.path: names.safe_repo_path(model.path, f.path) for f in manifest.files}

    def digest_of(mf: manifests.ManifestFile) -> art.LayerFile:
        where = sources[mf.path]
        verdict = ondisk.check(where, mf, mf, rehash=False)
        if not verdict.ok:
            raise IntegrityError(f"a file of the model is {verdict.problem}", f"{model.name}: {mf.path}",
                                 "run `vmm check` / `vmm pull` to repair it before pushing or exporting")
        sha256 = mf.sha256
        if not sha256:
            try:
                sha256, sha1, _size = hashing.file_hashes(where)
            except OSError as exc:
                raise IntegrityError("cannot read a file of the model", str(where), exc.strerror or str(exc)) from exc
            if mf.git_sha1 and sha1 != mf.git_sha1:
                raise IntegrityError("a file of the model does not match its manifest", f"{model.name}: {mf.path}",
                                     "run `vmm pull` to repair it")
        return art.LayerFile(mf.path, mf.size, f"sha256:{sha256}", art.media_type_for(mf.path), mf.git_sha1)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(manifest.files)))) as pool:
        files = list(pool.map(digest_of, manifest.files))
    from vmm.core.model import formats

    try:
        fmt = formats.detect_format(model.path)
    except Exception:  # noqa: BLE001 - the format is only a hint in the config
        fmt = None
    # An installed artifact keeps the creation time it came with: exported again, same digest.
    created = (manifest.extra.get("oci") or {}).get("created") if isinstance(manifest.extra.get("oci"), dict) else None
    if created is None and manifest.pulled_at:
        created = datetime.datetime.fromtimestamp(manifest.pulled_at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    a = art.build(manifest.repo_id, manifest.revision, manifest.commit, manifest.quant, files, fmt, created)
    return a, sources, manifest


def push(root: Path, name: str, target: str, insecure: bool = False, workers: int = DEFAULT_WORKERS,
         mount_from: str | None = None) -> PushResult:
    """Push a managed model to ``REGISTRY/REPO[:TAG]``; see the module doc."""
    _check_workers(workers)
    ref = reference.parse(target)
    if ref.digest:
        raise UsageError("push takes a tag, not a digest", target, "write REGISTRY/REPO[:TAG]")
    model = local.locate_model(name, root)
    tag = ref.tag or reference.DEFAULT_TAG
    registry = Registry(ref, insecure=insecure, push=True)
    try:
        with locking.model_lock(Path(root).absolute(), model.path.name, "push", shared=True):
            a, sources, manifest = model_artifact(root, name)
            uploaded = skipped = mounted = 0
            bytes_uploaded = 0
            by_digest = {}
            for f in a.files:
                by_digest.setdefault(f.digest, f)

            def one(digest: str, size: int) -> tuple[str, int]:
                where = f"{ref} {digest}"
                if registry.blob_exists(digest):
                    return "skipped", 0
                if digest == a.config_digest:
                    how = with_retries(lambda: registry.upload_blob(digest, size, data=a.config), "uploading", where)
                else:
                    path = str(sources[by_digest[digest].path])
                    how = with_retries(lambda: registry.upload_blob(digest, size, path=path, mount_from=mount_from),
                                       f"uploading {by_digest[digest].path}", where)
                return how, (size if how == "uploaded" else 0)

            blobs = a.blobs()
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blobs)))) as pool:
                results = list(pool.map(lambda b: one(*b), blobs))
            for how, n in results:
                uploaded += how == "uploaded"
                skipped += how == "skipped"
                mounted += how == "mounted"
                bytes_uploaded += n
            digest = registry.put_manifest(a.manifest, art.OCI_MANIFEST, tag)
            if digest and digest != a.manifest_digest:
                raise IntegrityError("the registry recorded another manifest digest", f"{ref} ({digest})",
                                     "the registry rewrote the manifest; push to another registry")
    finally:
        registry.close()
    return PushResult(name=manifest.repo_id, reference=f"{ref.registry}/{ref.repository}:{tag}@{a.manifest_digest}",
                      digest=a.manifest_digest, files=len(a.files), layers_uploaded=uploaded,
                      layers_skipped=skipped, layers_mounted=mounted, bytes_uploaded=bytes_uploaded,
                      bytes_total=a.bytes_total)


def _name_for(a: art.Artifact, name: str | None, fallback: str, where: str) -> str:
    """The model's name in the root: ``--name``, else the artifact's Hub id, else ``fallback``."""
    for candidate in (name, a.repo_id):
        if candidate:
            ref = names.parse_model_name(candidate)
            if ref.revision or ref.quant:
                raise UsageError("--name takes org/name without @REVISION or :QUANT", candidate, "drop the suffix")
            return ref.repo_id
    try:
        return names.parse_model_name(fallback).repo_id
    except UsageError:
        raise UsageError("the artifact does not say which model it is", where, "pass --name org/name") from None


def pull(root: Path, target: str, name: str | None = None, insecure: bool = False,
         workers: int = DEFAULT_WORKERS, wait: bool = True, progress: ProgressCallback | None = None) -> OciPullResult:
    """``vmm pull oci://REGISTRY/REPO[:TAG|@DIGEST]``; see the module doc."""
    _check_workers(workers)
    ref = reference.parse(target)
    registry = Registry(ref, insecure=insecure)
    where = str(ref)
    try:
        data, ctype = registry.get_manifest()
        a = art.parse(data, where, ctype)
        cdigest, csize = art.config_descriptor(data)
        a.config = registry.get_blob_bytes(cdigest, csize, "config")
        repo_id = _name_for(a, name, "/".join(ref.repository.split("/")[-2:]), where)

        def fetch(layer, start, end, sink, restart):
            registry.fetch_blob(layer.digest, start, end, layer.size, sink, restart)

        result = install.install(Path(root), repo_id, a, fetch, where, workers=workers, wait=wait, progress=progress,
                                 extra={"source": f"oci://{ref.registry}/{ref.repository}",
                                        "reference": where})
    finally:
        registry.close()
    return OciPullResult(name=result.name, path=result.path, revision=result.commit or result.revision,
                         files=result.files, bytes_downloaded=result.bytes_transferred,
                         bytes_total=result.bytes_total, verified=result.verified,
                         reference=f"{ref.registry}/{ref.repository}@{a.manifest_digest}", digest=a.manifest_digest,
                         commit=result.commit, kept_files=result.kept_files, chat_template=result.chat_template,
                         repaired=result.repaired, hashed_files=result.hashed_files)


def export(root: Path, name: str, target: str | os.PathLike, tag: str | None = None) -> ExportResult:
    """Write a managed model as an OCI image layout: ``target`` ending in ``.tar`` is one tar
    file, anything else a directory (new or empty)."""
    tag = tag or reference.DEFAULT_TAG
    if not reference._TAG.match(tag):
        raise UsageError("bad tag", tag, "letters, digits, _ . - (up to 128)")
    path = Path(target).expanduser().absolute()
    model = local.locate_model(name, root)
    with locking.model_lock(Path(root).absolute(), model.path.name, "export", shared=True):
        a, sources, manifest = model_artifact(root, name)
        if path.suffix == ".tar":
            layout.write_tar(path, a, sources, tag)
            kind = "oci-archive"
        else:
            layout.write_dir(path, a, sources, tag)
            kind = "oci-layout"
    return ExportResult(name=manifest.repo_id, path=str(path), format=kind, tag=tag, digest=a.manifest_digest,
                        files=len(a.files), bytes_total=a.bytes_total)


def import_layout(root: Path, source: str | os.PathLike, name: str | None = None, tag: str | None = None,
                  workers: int = 4, progress: ProgressCallback | None = None) -> OciImportResult:
    """Install the model of an OCI layout (directory or tar), every blob verified."""
    path = Path(source).expanduser().absolute()
    lay = layout.Layout(path)
    try:
        data, digest = lay.manifest(tag)
        a = art.parse(data, str(path))
        cdigest, csize = art.config_descriptor(data)
        a.config = lay.blob_bytes(cdigest, csize)
        repo_id = _name_for(a, name, path.name.removesuffix(".tar"), str(path))
        result = install.install(Path(root), repo_id, a, lay.fetcher(), str(path), workers=workers, progress=progress,
                                 extra={"source": str(path), "kind": lay.kind})
    finally:
        lay.close()
    return OciImportResult(name=result.name, path=result.path, source=str(path), kind=lay.kind,
                           revision=result.revision, commit=result.commit, files=result.files,
                           bytes_total=result.bytes_total, linked=0, copied=len(result.fetched_files),
                           verified=True, moved=False, digest=digest, kept_files=result.kept_files)
