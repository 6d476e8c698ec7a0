"""Models on disk: locate one, list the root, walk a model's files, sizes and free space."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmm.core import names
from vmm.core.errors import DiskSpaceError, NotFoundError, UsageError
from vmm.core.store.manifests import Manifest, read_manifest
from vmm.core.store import paths
from vmm.core.store.paths import META_DIR


@dataclass
class LocalModel:
    name: str                  # Hub id when known, else the directory name
    path: Path
    manifest: Manifest | None

    @property
    def managed(self) -> bool:
        return self.manifest is not None


def model_dirs(root: Path) -> Iterator[Path]:
    """Every model directory in the root, by name.

    Hidden entries are never models: vmm's state (``.vmm``), deletes in progress
    (:func:`paths.is_trash`) and import staging; plain files and symlinks are skipped too.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError("cannot read models root", str(root), exc.strerror or str(exc)) from exc
    for entry in entries:
        if entry.name.startswith(".") or paths.is_trash(entry.name) or not entry.is_dir(follow_symlinks=False):
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


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def walk_model_entries(model_dir: Path, include_hidden: bool = False) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative '/'-path, entry) of every non-directory entry under a model dir.

    The one rule for what a model's files are, used by ``ls`` (size, file count), ``gc``
    (size, bytes freed), ``dedup``, ``rm`` and the file list: everything in the directory
    except hidden top-level directories: vmm's ``.vmm`` (manifest, partial downloads,
    locks), ``.cache`` of ``hf download --local-dir``, ``.git``; vLLM never loads from them.
    ``include_hidden`` adds them, for what a deletion frees (they go with the model).
    Hidden files (``.gitattributes``) count. Symbolic links are entries, never followed.
    """
    stack = [(model_dir, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if not include_hidden and in_hidden_dir(prefix + entry.name + "/"):
                    continue
                stack.append((Path(entry.path), f"{prefix}{entry.name}/"))
            else:
                yield prefix + entry.name, entry


def in_hidden_dir(rel: str) -> bool:
    """Whether a relative path lies in a hidden top-level directory (not a model file)."""
    return rel.startswith(".") and "/" in rel
