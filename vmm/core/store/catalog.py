"""What the models root holds: list, inspect, list files, delete.

- ``list_root(root, sort, check_updates=None) -> Listing`` (``vmm ls``): every model, sorted,
  with the root's totals and, given the Hub's update check, each model's update; built from
  manifests and directory entries only, never a weight file's content, so 500 models list
  in a few milliseconds. ``list_models(root)`` is the bare list.
- ``resolve_model(name_or_path, root) -> (LocalModel, quant)``
- ``inspect_model(model, quant=None) -> ModelInfo`` (``vmm inspect``): config, parameters and
  bytes from the weights' headers, KV-cache bytes per token.
- ``list_model_files(model) -> list[ModelFile]`` (the original design's monitoring function, docs/architecture.md)
- ``delete_model_from_volume(root, name) -> RmResult`` (``vmm rm``), under the exclusive lock.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core.model import config as config_mod
from vmm.core.model.weights import WeightSummary, weight_summary
from vmm.core.model import formats, layers
from vmm.core import names, units
from vmm.core.store import local, locking, paths, usage
from vmm.core.errors import BusyError, IntegrityError, NotFoundError, UsageError


# --------------------------------------------------------------------------- ls

@dataclass
class ModelSummary:
    name: str
    path: str
    format: str
    size_bytes: int
    files: int
    sharded: bool
    shard_count: int
    revision: str | None
    managed: bool
    last_used: str | None           # ISO 8601 UTC, null when never used through vmm
    problem: str | None = None      # e.g. a corrupt manifest; the model is still listed
    # Usage (storage): total and per-command counts from the manifest, gc pin.
    uses: int = 0
    use_counts: dict[str, int] = field(default_factory=dict)
    pinned: bool = False


@dataclass
class ModelUpdateSummary(ModelSummary):
    """A listed model with the Hub's answer (``vmm ls --updates``); None for hand-made ones."""

    update: Any = None


@dataclass
class Listing:
    """``vmm ls``: the JSON document is this object, the table is built from it."""

    root: str
    models: list[ModelSummary] = field(default_factory=list)
    totals: usage.RootTotals | None = None

    @property
    def warnings(self) -> list[str]:
        """One line per model that could not be read fully or whose update check failed."""
        lines = [f"{m.name}: {m.problem}" for m in self.models if m.problem]
        for m in self.models:
            row = getattr(m, "update", None)
            if row is not None and getattr(row, "error", None):
                lines.append(f"{m.name}: update check failed: {row.error}")
        return lines


def _walk_files(model_dir: Path, include_hidden: bool = False,
                inodes: dict[tuple[int, int], int] | None = None) -> tuple[list[str], int]:
    """(relative paths, total apparent bytes) of a model's files (:func:`local.walk_model_entries`).

    Directory entries only (``lstat`` through ``scandir``); symlinks are counted as entries,
    never followed.
    """
    rels: list[str] = []
    total = 0
    for rel, entry in local.walk_model_entries(model_dir, include_hidden):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        total += st.st_size
        if inodes is not None:      # hardlinked files (vmm dedup) count once in totals
            inodes[(st.st_dev, st.st_ino)] = st.st_size
        rels.append(rel)
    rels.sort()
    return rels, total


def summarize(model_dir: Path, inodes: dict[tuple[int, int], int] | None = None) -> ModelSummary:
    problem = None
    try:
        model = local.load_model(model_dir)
    except IntegrityError as exc:
        problem = exc.line().removeprefix("error: ")
        model = local.LocalModel(names.dir_name_to_repo_id(model_dir.name) or model_dir.name, model_dir, None)
    rels, size = _walk_files(model_dir, inodes=inodes)
    fmt = formats.format_from_names(rels)
    top = [r for r in rels if "/" not in r]
    sharded, count = formats.shards_from_names(top if fmt != "gguf" else [r for r in rels if r.lower().endswith(".gguf")])
    manifest = model.manifest
    return ModelSummary(
        name=model.name, path=str(model_dir), format=fmt, size_bytes=size, files=len(rels),
        sharded=sharded, shard_count=count,
        revision=(manifest.commit or manifest.revision) if manifest else None,
        managed=manifest is not None or problem is not None,
        last_used=units.iso_time(manifest.last_used) if manifest else None,
        problem=problem,
        uses=sum(manifest.use_counts.values()) if manifest else 0,
        use_counts=dict(manifest.use_counts) if manifest else {},
        pinned=bool(manifest and manifest.pinned) or paths.pin_path(model_dir.parent, model_dir.name).exists(),
    )


def list_root(root: Path, sort: str = "name",
              check_updates: Callable[[Path, list[local.LocalModel]], list[Any]] | None = None) -> Listing:
    """``vmm ls``: the models sorted (:data:`usage.SORTS`), the root's totals and updates.

    ``check_updates(root, models) -> rows with .name`` is the Hub's update check (the hub
    layer's ``updates.check_updates``), passed in by the caller; with it every model
    becomes a :class:`ModelUpdateSummary`.
    """
    if sort not in usage.SORTS:
        raise UsageError("unknown sort order", repr(sort), f"use one of: {', '.join(usage.SORTS)}")
    root = Path(root)
    inodes: dict[tuple[int, int], int] = {}
    models = usage.sort_models(list_models(root, inodes), sort)
    if check_updates is not None:
        managed = [local.load_model(Path(m.path)) for m in models if m.managed and not m.problem]
        rows = {row.name: row for row in check_updates(root, managed)}
        models = [ModelUpdateSummary(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)},
                                     update=rows.get(m.name)) for m in models]
    return Listing(root=str(root), models=models, totals=usage.totals(root, models, inodes))


def list_models(root: Path, inodes: dict[tuple[int, int], int] | None = None) -> list[ModelSummary]:
    """Every model directory in the root, by directory name; an absent root is an empty list.

    ``inodes``, when given, collects (device, inode) -> size of every file (root totals).
    """
    return [summarize(d, inodes) for d in local.model_dirs(Path(root))]


# --------------------------------------------------------------------------- inspect


@dataclass
class ModelInfo:
    name: str
    path: str
    format: str
    config: dict[str, Any]
    parameters: int | None
    weight_bytes: int | None
    kv_cache_bytes_per_token: int | None
    # Beyond the contract.
    managed: bool = False
    revision: str | None = None
    quant: str | None = None
    gguf_file: str | None = None
    weight_source: str = ""
    dtypes: dict[str, int] = field(default_factory=dict)
    shard_count: int = 0
    config_source: str | None = None
    problems: list[str] = field(default_factory=list)
    derived: dict[str, Any] | None = None   # what serving uses (vmm.core.model.layers.derived)


def resolve_model(name_or_path: str, root: Path) -> tuple[local.LocalModel, str | None]:
    """A model by Hub id, directory name or directory path, and the ``:QUANT`` it names."""
    quant = None
    looks_like_path = name_or_path.startswith((".", "/", "~"))
    if looks_like_path:
        if not Path(name_or_path).expanduser().is_dir():
            raise NotFoundError("no such model directory", name_or_path,
                                "name a model directory, or a model of `vmm ls`")
    else:
        quant = names.parse_model_name(name_or_path).quant
    model = local.locate_model(name_or_path, root, allow_path=True)
    if quant is None and model.manifest is not None:
        quant = model.manifest.quant
    return model, quant


def inspect_model(model: local.LocalModel, quant: str | None = None) -> ModelInfo:
    path = model.path
    fmt = formats.detect_format(path)
    problems: list[str] = []
    gguf_file = None
    cfg = None
    if fmt == "gguf" or (fmt == "mixed" and not (path / "config.json").is_file()
                         and formats.find_gguf_files(path, read_metadata=False)):
        chosen = formats.select_gguf(path, quant)
        quant = chosen.quant
        gguf_file = chosen.path.relative_to(path).as_posix()
        if not (path / "config.json").is_file():
            pass

            cfg = config_mod.config_from_gguf(chosen.path)
    if cfg is None:
        try:
            cfg = config_mod.read_model_config(path)
        except NotFoundError as exc:
            problems.append(exc.what)
            cfg = config_mod.ModelConfig(source="")
    weights = weight_summary(path, quant) if fmt != "unknown" else WeightSummary(None, None)
    report = formats.shard_report(path, quant)
    if report.missing:
        problems.append(f"missing shards: {', '.join(report.missing)}")
    manifest = model.manifest
    return ModelInfo(
        name=model.name, path=str(path), format=fmt, config=cfg.contract_dict(),
        parameters=weights.parameters, weight_bytes=weights.weight_bytes,
        kv_cache_bytes_per_token=config_mod.kv_cache_bytes_per_token(cfg),
        managed=manifest is not None,
        revision=(manifest.commit or manifest.revision) if manifest else None,
        quant=quant if fmt in ("gguf", "mixed") and gguf_file else None,
        gguf_file=gguf_file, weight_source=weights.source, dtypes=weights.dtypes,
        shard_count=report.shard_count, config_source=cfg.source or None, problems=problems,
        derived=layers.derived(cfg, layers.model_max_len(cfg)) if cfg.num_hidden_layers else None,
    )


# --------------------------------------------------------------------------- files


@dataclass
class ModelFile:
    path: str                         # relative to the model dir, '/'-separated
    size_bytes: int
    expected_size: int | None = None  # from the manifest, when managed
    sha256: str | None = None


def list_model_files(model: local.LocalModel) -> list[ModelFile]:
    """Every file of the model (vmm metadata excluded) with its size and the manifest's."""
    expected = {f.path: f for f in (model.manifest.files if model.manifest else [])}
    result = []
    rels, _ = _walk_files(model.path)
    for rel in rels:
        try:
            size = os.lstat(model.path / rel).st_size
        except OSError:
            continue
        known = expected.get(rel)
        result.append(ModelFile(rel, size, known.size if known else None, known.sha256 if known else None))
    return result


# --------------------------------------------------------------------------- rm


@dataclass
class RmResult:
    name: str
    path: str
    bytes_freed: int
    files: int


def rm_target(name: str) -> names.ModelRef:
    """The model ``rm`` deletes: a whole model, never a revision or a quantization."""
    ref = names.parse_model_name(name)
    if ref.revision or ref.quant:
        raise UsageError("rm deletes a whole model, not a revision or quantization", name,
                         f"run `vmm rm {ref.repo_id}`")
    return ref


def delete_model_from_volume(root: Path, name: str) -> RmResult:
    """Delete a model directory under the exclusive model lock.

    The directory is first renamed to a hidden name in the root (one atomic step: listing
    and serving never see a half-deleted model), then removed without following symlinks
    (``shutil.rmtree`` unlinks links, never their targets). Leftovers of an earlier crash
    in the middle of a delete are removed on the way.
    """
    root = Path(root).absolute()
    ref = rm_target(name)
    path = root / ref.dir_name
    if path.is_symlink():
        raise UsageError("the model directory is a symbolic link", str(path),
                         "remove the link itself with `rm`; vmm never deletes outside the root")
    if not path.is_dir():
        raise NotFoundError("model not in the models root", f"{ref.repo_id} (looked in {path})",
                            f"see `vmm ls --root {root}`")
    model = local.load_model(path) if (path / paths.META_DIR).is_dir() else local.LocalModel(ref.repo_id, path, None)
    with locking.model_lock(root, ref.dir_name, "rm"):
        if not path.is_dir():   # deleted by another process while we waited for nothing
            raise NotFoundError("model not in the models root", ref.repo_id, "")
        bytes_freed, files = remove_locked(root, ref.dir_name)
    return RmResult(name=model.name, path=str(path), bytes_freed=bytes_freed, files=files)


def remove_locked(root: Path, dir_name: str) -> tuple[int, int]:
    """Delete ``<root>/<dir_name>`` while the caller holds its exclusive model lock.

    Returns (bytes, files) of everything removed, hidden directories included. Renamed to
    a trash name first, so nobody sees a half-deleted model; leftovers of an earlier
    crash in the middle of a delete of the same model go too.
    """
    path = root / dir_name
    rels, size = _walk_files(path, include_hidden=True)     # what it frees: hidden dirs too
    trash = paths.trash_path(root, dir_name, f"{os.getpid()}-{int(time.time() * 1000)}")
    try:
        os.rename(path, trash)
    except OSError as exc:
        raise UsageError("cannot delete the model", str(path),
                         f"{exc.strerror or exc}; is the models root writable?") from exc
    shutil.rmtree(trash, ignore_errors=True)
    for leftover in root.glob(paths.trash_glob(dir_name)):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
    return size, len(rels)


def rm_preview(root: Path, name: str) -> RmResult:
    """What ``rm`` would delete (model, bytes, files), for the prompt; exit 3 when absent,
    8 while locked (checked again under the lock at deletion)."""
    root = Path(root).absolute()
    ref = rm_target(name)
    model = local.locate_model(ref.repo_id, root)
    if locking.is_locked(root, ref.dir_name):
        raise BusyError("model is locked by another vmm process", model.name,
                        "wait for the pull or serve using it to finish, or stop it")
    size, count = model_size(model)
    return RmResult(name=model.name, path=str(model.path), bytes_freed=size, files=count)


def model_size(model: local.LocalModel) -> tuple[int, int]:
    """(bytes, files) of a model dir, for the rm prompt."""
    rels, size = _walk_files(model.path)
    return size, len(rels)
