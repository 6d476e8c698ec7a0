"""Weight formats: detection from the files present, shards and indexes, headers.

Interface (shared by ls, inspect, check, pull and serve):
- ``detect_format(model_dir) -> "safetensors"|"pytorch"|"gguf"|"mixed"|"unknown"``
- ``check_model_sharding(model_dir) -> (is_sharded, shard_count, shard_files)`` (SPEC.md order)
- ``shard_report(model_dir) -> ShardReport`` (adds index name, missing and unindexed shards)
- ``find_gguf_files(model_dir) -> list[GgufFile]`` (one entry per quantization; split parts grouped)
- ``get_gguf_file(model_dir, quant=None) -> Path`` (first part; exit 2 listing the choices when ambiguous)
- ``read_safetensors_header(path) -> dict`` (8-byte length + JSON header only, never the data)
- ``weight_summary(model_dir, quant=None) -> WeightSummary`` (parameters and bytes from headers)
- ``gguf_quant_of(filename)`` / ``gguf_split_of(filename)``: filename-level helpers pull uses
  on the Hub's file list before anything is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("safetensors", "pytorch", "gguf", "mixed", "unknown")

# llama.cpp quantization type names as they appear in file names (ggml-org / TheBloke /
# bartowski conventions: "model.Q4_K_M.gguf", "model-Q4_K_M-00001-of-00003.gguf",
# "model-IQ3_XXS.gguf", "model-f16.gguf", "model-BF16.gguf").
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"I?Q[1-8](?:_[0-9A-Z]+)*"          # Q4_0, Q4_K_M, Q5_K_S, IQ2_XXS, IQ4_NL, Q4_0_4_4
    r"|TQ[12]_0"
    r"|[Ff](?:16|32)|BF16|bf16"
    r"|MXFP4(?:_MOE)?"
    r")(?![A-Za-z0-9])"
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


@dataclass
class WeightSummary:
    parameters: int | None
    weight_bytes: int | None
    dtypes: dict[str, int] = field(default_factory=dict)   # dtype -> parameter count
    source: str = ""                                      # "safetensors headers", "index total_size", "gguf"
