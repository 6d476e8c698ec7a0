"""Adopting what the host already has: model directories and Hugging Face cache entries.

- ``import_model(root, source, name=None, move=False, force=False) -> ImportResult``
  (``vmm import``): ``source`` is a model directory (any path), an HF cache entry
  (``.../models--org--name``, one of its ``snapshots/<sha>`` dirs) or a Hub id looked up in
  ``HF_HUB_CACHE`` (``org/name`` or ``org/name@REVISION``). Files are hardlinked (copied
  across filesystems) into ``<root>/org--name`` with a manifest of their hashes; nothing is
  downloaded and the source is left as it was (``move`` removes it afterwards).
- ``find_in_hf_cache(repo_id, commit, files) -> {path: blob}``: cache blobs whose content
  matches the expected hash, for pull to link instead of downloading (the repo's own entry
  first, then, for LFS files, any other repo of the cache holding the same sha256).

The HF cache layout (huggingface_hub 1.x/2.x, ``file_download.py``)::

    <HF_HUB_CACHE>/models--org--name/refs/main            the commit sha main points to
    <HF_HUB_CACHE>/models--org--name/snapshots/<sha>/f   relative symlink to ../../blobs/<id>
    <HF_HUB_CACHE>/models--org--name/blobs/<id>          id = sha256 (LFS) or git blob sha1

huggingface_hub 2.4 adds a cache-wide shared blob store for Xet files
(``utils/_shared_blobs.py``): the bytes live once in ``<HF_HUB_CACHE>/blobs/<2hex>/<xet
hash>`` (a regular, read-only file, marked by ``blobs/.huggingface-shared-blobs``), and each
repo's ``blobs/<id>`` is a relative symlink to it. So the blob's *name* (what its content
must hash to) is the first hop of the snapshot link, not the name of the file holding the
bytes (a Xet hash, which is no sha256 of the content), and a blob of another repo of the
cache may hold the same bytes.

A blob is trusted only after its content hashes to its name.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vmm.core import hashing, names, settings
from vmm.core.store import local, locking, manifests, paths
from vmm.core.store.dedup import link_or_copy
from vmm.core.errors import IntegrityError, NotFoundError, UsageError

REPO_PREFIX = "models--"


@dataclass
class ImportResult:
    name: str
    path: str
    source: str
    kind: str                    # "directory" or "hf-cache"
    revision: str | None
    commit: str | None
    files: int
    bytes_total: int
    linked: int
    copied: int
    verified: bool               # every file hashed (and, from the cache, matched its blob name)
    moved: bool = False


@dataclass
class _Source:
    kind: str
    root: Path                   # the directory whose tree is adopted
    repo_id: str | None
    revision: str | None
    commit: str | None
    cache_entry: Path | None = None
    files: list[tuple[str, Path, str | None]] = field(default_factory=list)  # rel, real file, blob name


def _cache_repo_id(entry: Path) -> str | None:
    if not entry.name.startswith(REPO_PREFIX):
        return None
    return names.dir_name_to_repo_id(entry.name[len(REPO_PREFIX):])


def _resolve_ref(entry: Path, revision: str | None) -> tuple[str, str]:
    """(revision asked, commit sha) of a cache entry; a sha is taken as it is."""
    revision = revision or "main"
    if hashing.looks_like_sha1(revision) and (entry / "snapshots" / revision).is_dir():
        return revision, revision
    ref = entry / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        snaps = sorted(p.name for p in (entry / "snapshots").iterdir()) if (entry / "snapshots").is_dir() else []
        if revision == "main" and len(snaps) == 1:
            return snaps[0], snaps[0]
        raise NotFoundError("revision not in the HF cache entry", f"{entry} (no refs/{revision})",
                            f"snapshots present: {', '.join(snaps) or 'none'}; name one with @REVISION") from None
    if not hashing.looks_like_sha1(commit):
        raise IntegrityError("malformed ref in the HF cache", str(ref), "expected a 40-hex commit sha")
    return revision, commit


def _walk(top: Path, follow_links: bool) -> list[tuple[str, Path]]:
    """(relative path, entry path) of every file below ``top``, hidden top-level dirs skipped."""
    out: list[tuple[str, Path]] = []
    stack = [(top, "")]
    while stack:
        directory, prefix = stack.pop()
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if not prefix and entry.name.startswith("."):
                    continue         # .vmm, .git, .cache (hf --local-dir metadata)
                stack.append((path, f"{prefix}{entry.name}/"))
            elif entry.is_symlink():
                if not follow_links:
                    continue
                if not path.exists():
                    raise IntegrityError("broken symbolic link in the source", str(path),
                                         "restore its target (for an HF cache: `hf download` again) or remove the link")
                if path.is_dir():
                    raise UsageError("symbolic link to a directory in the source", str(path),
                                     "import the directory it points to instead")
                out.append((prefix + entry.name, path))
            elif entry.is_file(follow_symlinks=False):
                out.append((prefix + entry.name, path))
    return sorted(out)


def _blob_of(path: Path, entry: Path) -> tuple[Path, str | None]:
    """(the file that holds the bytes, the repo blob's name) of a snapshot file ``path``.

    ``snapshots/<sha>/<f>`` -> ``../../blobs/<id>``; ``<id>`` may itself link into the
    shared store (``<cache>/blobs/<2hex>/<xet hash>``): the name that says what the content
    hashes to is ``<id>``, the first hop."""
    real = path.resolve() if path.is_symlink() else path
    if path.is_symlink():
        hop = Path(os.path.normpath(path.parent / os.readlink(path)))
        if hop.parent.name == "blobs" and hop.parent.parent.name == entry.name:
            return real, hop.name
    return real, (real.name if real.parent.name == "blobs" else None)


def _cache_source(entry: Path, revision: str | None, snapshot: Path | None = None) -> _Source:
    repo_id = _cache_repo_id(entry)
    if repo_id is None:
        raise UsageError("not an HF cache entry name", entry.name, "expected models--org--name")
    if snapshot is not None:
        revision = commit = snapshot.name
    else:
        revision, commit = _resolve_ref(entry, revision)
        snapshot = entry / "snapshots" / commit
    if not snapshot.is_dir():
        raise NotFoundError("snapshot missing from the HF cache entry", str(snapshot),
                            "download it again with `hf download`, or name another @REVISION")
    src = _Source("hf-cache", snapshot, repo_id, revision, commit, cache_entry=entry)
    for rel, path in _walk(snapshot, follow_links=True):
        blob, blob_name = _blob_of(path, entry)
        src.files.append((rel, blob, blob_name))
    return src


def _looks_like_model_dir(path: Path) -> bool:
    from vmm.core.model import formats

    if (path / "config.json").is_file() or (path / "params.json").is_file():
        return True
    try:
        return formats.detect_format(path) != "unknown"
    except Exception:   # noqa: BLE001 - an unreadable directory is not a model dir
        return False


def resolve_source(source: str, cache_dir: Path | None = None) -> _Source:
    """What ``source`` names: a directory, a cache entry or snapshot, or a cached Hub id."""
    try:
        return _resolve_source(source, cache_dir)
    except OSError as exc:
        raise UsageError("cannot read the source", str(exc.filename or source),
                         f"{exc.strerror or exc}; check its permissions") from exc


def _resolve_source(source: str, cache_dir: Path | None = None) -> _Source:
    path = Path(source).expanduser()
    if path.exists() or path.is_symlink():
        path = path.absolute()
        if not path.is_dir():
            raise UsageError("not a model directory", str(path), "name a directory holding config.json and weights, "
                             "or an HF cache entry (models--org--name)")
        if path.name.startswith(REPO_PREFIX) and (path / "snapshots").is_dir():
            return _cache_source(path, None)
        if path.parent.name == "snapshots" and path.parent.parent.name.startswith(REPO_PREFIX):
            return _cache_source(path.parent.parent, None, snapshot=path)
        if not _looks_like_model_dir(path):
            raise UsageError("not a model directory", str(path),
                             "expected config.json or weight files (*.safetensors, *.bin, *.gguf)")
        src = _Source("directory", path, names.dir_name_to_repo_id(path.name), None, None)
        src.files = [(rel, p, None) for rel, p in _walk(path, follow_links=True)]
        return src
    if source.startswith((".", "/", "~")):
        raise NotFoundError("no such directory", source, "name a model directory or an HF cache entry")
    ref = names.parse_model_name(source)
    cache = cache_dir or settings.hf_hub_cache()
    entry = cache / f"{REPO_PREFIX}{ref.dir_name}"
    if not entry.is_dir():
        raise NotFoundError("not a directory and not in the HF cache", f"{source} (looked in {entry})",
                            "pass a directory path, or set HF_HUB_CACHE to the cache that holds it")
    return _cache_source(entry, ref.revision)


def _verify(rel: str, real: Path, blob_name: str | None) -> manifests.ManifestFile:
    try:
        sha256, sha1, size = hashing.file_hashes(real)
    except OSError as exc:
        raise IntegrityError("cannot read a source file", f"{rel} ({real})", exc.strerror or str(exc)) from exc
    if blob_name is not None:
        if hashing.looks_like_sha256(blob_name) and blob_name != sha256:
            raise IntegrityError("HF cache blob does not match its name (sha256)", f"{rel} -> {real}",
                                 "the cache entry is damaged: `hf download` it again; nothing was imported")
        if hashing.looks_like_sha1(blob_name) and blob_name != sha1:
            raise IntegrityError("HF cache blob does not match its name (git sha1)", f"{rel} -> {real}",
                                 "the cache entry is damaged: `hf download` it again; nothing was imported")
    # The manifest keeps the Hub's meaning of each field (what pull writes): ``sha256`` is
    # the LFS content hash, ``git_sha1`` the Hub's blob id, which for an LFS file is the
    # pointer's, not the content's. A cache blob's name says which kind it is; a plain
    # directory does not say which files were LFS, so it gets the content sha256 only.
    if blob_name is not None and hashing.looks_like_sha1(blob_name):
        return manifests.ManifestFile(path=rel, size=size, sha256=None, git_sha1=sha1)
    return manifests.ManifestFile(path=rel, size=size, sha256=sha256, git_sha1=None)


def _stage(src: Any, files: list, staging: Path) -> tuple[int, int]:
    """Link (else copy) the verified source files into ``staging``: (linked, copied)."""
    linked = copied = 0
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for (rel, real, _b), mf in zip(src.files, files):
            how = link_or_copy(real, names.safe_repo_path(staging, rel))
            if how == "link":
                linked += 1
            else:
                copied += 1
            # A file that changed between hashing and linking is not what the manifest says.
            if os.stat(names.safe_repo_path(staging, rel)).st_size != mf.size:
                raise IntegrityError("source file changed while importing", f"{rel} ({real})",
                                     "import again once nothing writes to the source")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return linked, copied


def import_model(root: Path, source: str, name: str | None = None, move: bool = False,
                 force: bool = False, cache_dir: Path | None = None) -> ImportResult:
    """Adopt ``source`` into ``<root>/org--name`` with a manifest; see the module doc."""

    root = Path(root).absolute()
    if name is not None:
        ref = names.parse_model_name(name)
        if ref.revision or ref.quant:
            raise UsageError("--name takes org/name without @REVISION or :QUANT", name, "drop the suffix")
    src = resolve_source(source, cache_dir)
    if name is not None:
        repo_id = ref.repo_id
    elif src.repo_id is not None:
        repo_id = src.repo_id
    else:
        raise UsageError("cannot name the model from its directory", src.root.name,
                         "pass --name org/name")
    dir_name = names.parse_model_name(repo_id).dir_name
    target = root / dir_name
    if not src.files:
        raise UsageError("nothing to import: the source holds no files", str(src.root), "name a model directory")
    for rel, _p, _b in src.files:
        names.safe_repo_path(target, rel)
    in_place = src.kind == "directory" and src.root.resolve() == target.resolve() if target.exists() else False
    local.ensure_root(root)
    with locking.model_lock(root, dir_name, "import"):
        if target.exists() and not in_place and not force:
            raise UsageError("a model of that name is already in the root", f"{repo_id} ({target})",
                             "pass --force to replace it, or --name to import under another name")
        # hashlib releases the GIL on large buffers: files hash in parallel threads.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            files = list(pool.map(lambda f: _verify(*f), src.files))
        linked = copied = 0
        moved = False
        if in_place:
            staging = target
        elif move and src.kind == "directory":
            staging = paths.import_staging(root, dir_name, os.getpid())
            try:
                os.rename(src.root, staging)
                moved = True
            except OSError:
                staging = None
        else:
            staging = None
        if staging is None:
            staging = paths.import_staging(root, dir_name, os.getpid())
            linked, copied = _stage(src, files, staging)
        now = time.time()
        manifest = manifests.Manifest(repo_id=repo_id, revision=src.revision, commit=src.commit, files=files,
                                  pulled_at=now, extra={"imported_from": str(src.root), "imported_at": now,
                                                        "import_kind": src.kind})
        # In place, uses recorded until now (and a pin) carry over; a fresh staging has none.
        manifests.write_manifest(staging, manifest, carry_usage=in_place)
        if staging != target:
            if target.exists():
                trash = paths.trash_path(root, dir_name, f"import-{os.getpid()}")
                os.rename(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(staging, target)
    if move and src.kind == "hf-cache" and src.cache_entry is not None:
        # Our hardlinks (or copies) keep the data; the cache entry's names go.
        shutil.rmtree(src.cache_entry, ignore_errors=True)
        moved = True
    elif move and src.kind == "directory" and not moved and not in_place:
        shutil.rmtree(src.root, ignore_errors=True)
        moved = True
    return ImportResult(name=repo_id, path=str(target), source=str(src.root), kind=src.kind,
                        revision=src.revision, commit=src.commit, files=len(files),
                        bytes_total=sum(f.size for f in files), linked=linked, copied=copied,
                        verified=True, moved=moved)


def find_in_hf_cache(repo_id: str, commit: str | None, files: Iterable[Any],
                     cache_dir: Path | None = None) -> dict[str, Path]:
    """{repo path: cache blob} for ``files`` whose blob in the HF cache hashes to what they expect.

    ``files`` are objects or dicts with ``path``, ``size``, ``sha256`` (LFS) and/or
    ``git_sha1``. Blobs are looked up by name in ``blobs/`` (any revision that shares the
    content counts), else through ``snapshots/<commit>/<path>``; each is hashed before it is
    returned. A missing or unreadable cache is simply an empty answer.
    """
    cache = cache_dir or settings.hf_hub_cache()
    entry = cache / f"{REPO_PREFIX}{names.parse_model_name(repo_id).dir_name}"
    found: dict[str, Path] = {}
    if not cache.is_dir():
        return found
    others: list[Path] | None = None          # the cache's other repo entries, listed once
    for f in files:
        get = (lambda k: f.get(k)) if isinstance(f, dict) else (lambda k: getattr(f, k, None))
        path, size, sha256, sha1 = get("path"), get("size"), get("sha256"), get("git_sha1")
        candidates = [entry / "blobs" / h for h in (sha256, sha1) if h]
        if commit and path:
            candidates.append(entry / "snapshots" / commit / path)
        if sha256:
            # Another repo of the cache with the same LFS blob (with huggingface_hub 2.4's
            # shared store, its blobs/<sha256> links to the one copy in <cache>/blobs/).
            if others is None:
                others = _other_entries(cache, entry)
            candidates.extend(other / "blobs" / sha256 for other in others)
        for cand in candidates:
            try:
                real = cand.resolve(strict=True)
                if not real.is_file() or (size is not None and real.stat().st_size != size):
                    continue
                got256, got1, _ = hashing.file_hashes(real)
            except OSError:
                continue
            if (sha256 and got256 == sha256) or (not sha256 and sha1 and got1 == sha1):
                found[path] = real
                break
    return found


def _other_entries(cache: Path, entry: Path) -> list[Path]:
    try:
        return sorted(p for p in cache.iterdir() if p.name.startswith(REPO_PREFIX) and p != entry and p.is_dir())
    except OSError:
        return []
