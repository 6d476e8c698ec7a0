"""Weight formats: detection from the files present, shards and indexes, GGUF files.

What the weights weigh (headers, parameters, bytes) is :mod:`vmm.core.model.weights`.

Interface (shared by ls, inspect, check, pull and serve):
- ``detect_format(model_dir) -> "safetensors"|"pytorch"|"gguf"|"mixed"|"unknown"``
- ``check_model_sharding(model_dir) -> (is_sharded, shard_count, shard_files)`` (the core API's order, docs/architecture.md)
- ``shard_report(model_dir) -> ShardReport`` (adds index name, missing and unindexed shards)
- ``find_gguf_files(model_dir) -> list[GgufFile]`` (one entry per quantization; split parts grouped)
- ``get_gguf_file(model_dir, quant=None) -> Path`` (first part; exit 2 listing the choices when ambiguous)
- ``gguf_quant_of(filename)`` / ``gguf_split_of(filename)``: filename-level helpers pull uses
  on the Hub's file list before anything is downloaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError, NotFoundError, UsageError


# llama.cpp quantization type names as they appear in file names (ggml-org / TheBloke /
# bartowski conventions: "model.Q4_K_M.gguf", "model-Q4_K_M-00001-of-00003.gguf",
# "model-IQ3_XXS.gguf", "model-f16.gguf", "model-BF16.gguf").
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"I?Q[1-8](?:_[0-9A-Z]+)*"          # Q4_0, Q4_K_M, Q5_K_S, IQ2_XXS, IQ4_NL, Q4_0_4_4
    r"|TQ[12]_0"
    r"|[Ff](?:16|32)|BF16|bf16"
    r"|MXFP4(?:_MOE)?"
    r")(?![A-Za-z0-9])",
    re.I,   # Qwen's own GGUF repos use lower case: qwen2-7b-instruct-q4_k_m.gguf
)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)


def gguf_split_of(filename: str) -> tuple[int, int] | None:
    """``x-00002-of-00003.gguf`` -> (2, 3); None for a single-file GGUF."""
    match = _SPLIT_RE.search(filename)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def gguf_quant_of(filename: str) -> str | None:
    """The quantization named in a GGUF file name, upper-cased (``Q4_K_M``, ``F16``), or None."""
    base = filename.rsplit("/", 1)[-1]
    base = _SPLIT_RE.sub(".gguf", base)
    if not base.lower().endswith(".gguf"):
        return None
    stem = base[: -len(".gguf")]
    found = _QUANT_RE.findall(stem)
    return found[-1].upper() if found else None


@dataclass
class ShardReport:
    sharded: bool
    shard_count: int
    shard_files: list[str]
    index: str | None
    missing: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)


@dataclass
class GgufFile:
    path: Path                 # the file vLLM is given: the single file or the first split part
    quant: str | None
    parts: list[Path]          # every part (one for a single file)
    size_bytes: int = 0


# --------------------------------------------------------------------------- files present

PYTORCH_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_PT_SHARD_RE = re.compile(r"^pytorch_model-\d+-of-\d+\.bin$")
ST_SHARD_RE = re.compile(r"^model-\d+-of-\d+\.safetensors$")
_ANY_SHARD_RE = re.compile(r"-\d+-of-\d+\.(?:safetensors|bin)$")
# Non-weight .bin files that Hub repos commonly carry (Trainer, optimizer state).
_NOT_WEIGHTS_BIN = {"training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.bin"}
_GGUF_MAX_DEPTH = 2       # GGUF repos sometimes keep each quant in a sub-folder (Q4_K_M/...)



def top_files(model_dir: Path) -> list[str]:
    """Names of the regular files directly in the model dir (no recursion, no stat of weights)."""
    try:
        with os.scandir(model_dir) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
    except FileNotFoundError:
        raise NotFoundError("model directory not found", str(model_dir),
                            "check the name with `vmm ls`") from None
    except NotADirectoryError:
        raise NotFoundError("not a model directory", str(model_dir),
                            "name a directory under the models root") from None
    except OSError as exc:
        raise UsageError("cannot read model directory", str(model_dir), exc.strerror or str(exc)) from exc


def _gguf_paths(model_dir: Path, top: list[str] | None = None) -> list[Path]:
    found = [model_dir / n for n in (top if top is not None else top_files(model_dir))
             if n.lower().endswith(".gguf")]

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False) and depth < _GGUF_MAX_DEPTH:
                walk(Path(entry.path), depth + 1)
            elif depth > 0 and entry.name.lower().endswith(".gguf") and entry.is_file():
                found.append(Path(entry.path))

    walk(model_dir, 0)
    return sorted(found)


def is_pytorch_weight(name: str) -> bool:
    return name.endswith(".bin") and name.startswith("pytorch_model") and name not in _NOT_WEIGHTS_BIN


def formats_present(model_dir: Path, top: list[str] | None = None) -> set[str]:
    """Which weight formats have files in the directory."""
    model_dir = Path(model_dir)
    top = top_files(model_dir) if top is None else top
    kinds: set[str] = set()
    for name in top:
        if name.endswith(".safetensors"):
            kinds.add("safetensors")
        elif is_pytorch_weight(name):
            kinds.add("pytorch")
        elif name.lower().endswith(".gguf"):
            kinds.add("gguf")
    if "gguf" not in kinds and _gguf_paths(model_dir, top):
        kinds.add("gguf")
    return kinds


def detect_format(model_dir: Path, top: list[str] | None = None) -> str:
    """``safetensors``, ``pytorch``, ``gguf``, ``mixed`` (several) or ``unknown`` (none).

    Decided by the weight files present, never by the model's name.
    """
    kinds = formats_present(Path(model_dir), top)
    if not kinds:
        return "unknown"
    return kinds.pop() if len(kinds) == 1 else "mixed"


# --------------------------------------------------------------------------- shards


def read_index(path: Path) -> dict[str, Any]:
    """Parse a ``*.index.json``; its ``weight_map`` must map tensor names to file names."""
    try:
        doc = jsonfile.loads(path.read_bytes())
    except OSError as exc:
        raise IntegrityError("cannot read shard index", str(path), exc.strerror or str(exc)) from exc
    except ValueError as exc:
        raise IntegrityError(f"malformed shard index ({exc})", str(path),
                             "re-download it with `vmm pull`") from exc
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise IntegrityError("malformed shard index (no weight_map of file names)", str(path),
                             "re-download it with `vmm pull`")
    for fname in set(weight_map.values()):
        if not fname or fname.startswith("/") or "\\" in fname or "\0" in fname \
                or any(p in ("", ".", "..") for p in fname.split("/")):
            raise IntegrityError(f"shard index names an unsafe path {fname!r}", str(path),
                                 "the index is corrupt or hostile; re-download it")
    return doc


def _index_files(doc: dict[str, Any]) -> list[str]:
    return sorted(set(doc["weight_map"].values()))


def _exists(model_dir: Path, rel: str, top: set[str]) -> bool:
    return rel in top if "/" not in rel else (model_dir / rel).is_file()


def _index_report(model_dir: Path, index_name: str, top: list[str]) -> ShardReport:
    doc = read_index(model_dir / index_name)
    named = _index_files(doc)
    present = set(top)
    ext = ".bin" if index_name == PYTORCH_INDEX else ".safetensors"
    single = "pytorch_model.bin" if ext == ".bin" else "model.safetensors"
    missing = [f for f in named if not _exists(model_dir, f, present)]
    unindexed = [n for n in top if n.endswith(ext) and n not in named
                 and (_ANY_SHARD_RE.search(n) or n == single)]
    return ShardReport(sharded=len(named) > 1 or any(_ANY_SHARD_RE.search(n) for n in named),
                       shard_count=len(named), shard_files=named, index=index_name,
                       missing=missing, unindexed=unindexed)


def shard_report(model_dir: Path, quant: str | None = None) -> ShardReport:
    """Shards and index consistency, looking in the core API's order (docs/architecture.md):

    1. ``pytorch_model.bin.index.json``  2. ``model.safetensors.index.json``
    3. ``pytorch_model-*.bin``           4. ``model-*.safetensors``
    then a single ``pytorch_model.bin`` / ``model.safetensors``, then GGUF files (split parts
    of the chosen quant; every GGUF file when several quants and none chosen).

    One deviation, on purpose: an index none of whose shards is present is skipped when a
    later step finds weights (a pull that took the safetensors of a repo that also ships a
    pytorch index must not read as "every shard missing"). With no weights at all, the index
    is reported with every shard missing.
    """
    model_dir = Path(model_dir)
    top = top_files(model_dir)
    present = set(top)
    stale: ShardReport | None = None
    for index_name in (PYTORCH_INDEX, SAFETENSORS_INDEX):
        if index_name in present:
            report = _index_report(model_dir, index_name, top)
            if report.shard_count and len(report.missing) == report.shard_count:
                stale = stale or report
                continue
            return report
    for pattern in (_PT_SHARD_RE, ST_SHARD_RE):
        shards = [n for n in top if pattern.match(n)]
        if shards:
            return ShardReport(True, len(shards), shards, None, [], [])
    for single in ("pytorch_model.bin", "model.safetensors"):
        if single in present:
            return ShardReport(False, 1, [single], None, [], [])
    gguf = find_gguf_files(model_dir, read_metadata=False)
    if gguf:
        if quant:
            gguf = [g for g in gguf if (g.quant or "").upper() == quant.upper()] or gguf
        parts = [p for g in gguf for p in g.parts]
        missing = [m for g in gguf for m in _missing_parts(g, model_dir)]
        # Like an index's list, the split's expected parts: present and missing ones.
        rel = sorted({p.relative_to(model_dir).as_posix() for p in parts} | set(missing))
        sharded = any(len(g.parts) > 1 or gguf_split_of(g.path.name) for g in gguf)
        return ShardReport(sharded, len(rel), rel, None, missing, [])
    if stale is not None:
        return stale
    return ShardReport(False, 0, [], None, [], [])


def check_model_sharding(model_dir: Path) -> tuple[bool, int, list[str]]:
    """The original design's core function (docs/architecture.md): ``(is_sharded, shard_count, shard_files)``."""
    report = shard_report(Path(model_dir))
    return report.sharded, report.shard_count, report.shard_files


def format_from_names(rel_paths: list[str]) -> str:
    """:func:`detect_format` from a listing (paths relative to the model dir), no I/O."""
    kinds: set[str] = set()
    for rel in rel_paths:
        depth = rel.count("/")
        name = rel.rsplit("/", 1)[-1]
        if name.lower().endswith(".gguf") and depth <= _GGUF_MAX_DEPTH:
            kinds.add("gguf")
        elif depth == 0 and name.endswith(".safetensors"):
            kinds.add("safetensors")
        elif depth == 0 and is_pytorch_weight(name):
            kinds.add("pytorch")
    if not kinds:
        return "unknown"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def shards_from_names(top: list[str]) -> tuple[bool, int]:
    """(sharded, shard count) from file names alone, for ``vmm ls`` (no index parsing)."""
    for pattern in (_PT_SHARD_RE, ST_SHARD_RE):
        shards = [n for n in top if pattern.match(n)]
        if shards:
            return True, len(shards)
    if "pytorch_model.bin" in top or "model.safetensors" in top:
        return False, 1
    gguf = [n for n in top if n.lower().endswith(".gguf") and not n.rsplit("/", 1)[-1].lower().startswith("mmproj")]
    if gguf:
        return any(gguf_split_of(n) for n in gguf), len(gguf)
    return False, 0


# --------------------------------------------------------------------------- GGUF files


def _missing_parts(g: GgufFile, model_dir: Path) -> list[str]:
    split = gguf_split_of(g.path.name)
    if not split:
        return []
    have = {gguf_split_of(p.name)[0] for p in g.parts if gguf_split_of(p.name)}
    stem = _SPLIT_RE.sub("", g.path.name)
    rel_dir = g.path.parent.relative_to(model_dir).as_posix()
    prefix = "" if rel_dir == "." else rel_dir + "/"
    return [f"{prefix}{stem}-{i:05d}-of-{split[1]:05d}.gguf" for i in range(1, split[1] + 1) if i not in have]


def find_gguf_files(model_dir: Path, read_metadata: bool = True) -> list[GgufFile]:
    """One entry per quantization, split parts grouped; sorted by quant.

    The quant comes from the file name, else (``read_metadata``) from the GGUF's own
    ``general.file_type``. Vision projectors (``mmproj*.gguf``) are not a quant choice.
    """
    model_dir = Path(model_dir)
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in _gguf_paths(model_dir):
        if path.name.lower().startswith("mmproj"):
            continue
        key = (path.parent, _SPLIT_RE.sub("", path.name) if gguf_split_of(path.name) else path.name)
        groups.setdefault(key, []).append(path)
    result = []
    for _key, parts in groups.items():
        parts.sort(key=lambda p: (gguf_split_of(p.name) or (0, 0))[0])
        first = parts[0]
        quant = gguf_quant_of(first.name)
        if quant is None and read_metadata:
            from vmm.core.model import gguf_meta

            try:
                quant = gguf_meta.quant_from_file_type(
                    gguf_meta.read_gguf(first, tensors=False).metadata.get("general.file_type"))
            except IntegrityError:
                quant = None
        size = 0
        for p in parts:
            try:
                size += p.stat().st_size
            except OSError:
                pass
        result.append(GgufFile(path=first, quant=quant, parts=parts, size_bytes=size))
    result.sort(key=lambda g: ((g.quant or "~"), g.path.as_posix()))
    return result


def _choice(g: GgufFile, model_dir: Path) -> str:
    return g.quant or g.path.relative_to(model_dir).as_posix()


def select_gguf(model_dir: Path, quant: str | None = None) -> GgufFile:
    """The GGUF quantization to use: the only one, or the one ``quant`` names."""
    model_dir = Path(model_dir)
    files = find_gguf_files(model_dir)
    if not files:
        raise NotFoundError("no GGUF file in the model directory", str(model_dir),
                            "pull a GGUF repo, or name a safetensors model")
    choices = ", ".join(_choice(g, model_dir) for g in files)
    if quant:
        wanted = quant.upper()
        matches = [g for g in files if (g.quant or "").upper() == wanted
                   or g.path.name == quant or g.path.relative_to(model_dir).as_posix() == quant]
        if not matches:
            raise NotFoundError(f"no GGUF file for quantization {quant}", str(model_dir),
                                f"available: {choices}")
        if len(matches) > 1:
            raise UsageError(f"several GGUF files for quantization {quant}", str(model_dir),
                             "name the file: " + ", ".join(g.path.relative_to(model_dir).as_posix() for g in matches))
        chosen = matches[0]
    elif len(files) > 1:
        raise UsageError("several GGUF quantizations, choose one", str(model_dir),
                         f"add :QUANT to the name, one of: {choices}")
    else:
        chosen = files[0]
    missing = _missing_parts(chosen, model_dir)
    if missing:
        raise IntegrityError("split GGUF is missing parts", ", ".join(missing),
                             "re-download it with `vmm pull`")
    return chosen


def get_gguf_file(model_dir: Path, quant: str | None = None) -> Path:
    """The file to give vLLM (the single file or the first split part); exit 2 when ambiguous."""
    return select_gguf(Path(model_dir), quant).path
