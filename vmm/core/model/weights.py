"""What the weights weigh: parameters and bytes from their own headers, never from guesses.

- ``read_safetensors_header(path) -> dict`` (8-byte length + JSON header only, never the data)
- ``parse_safetensors_header(raw, size, name)`` / ``safetensors_header_length(prefix, size, name)``:
  the same checks on bytes read by HTTP Range (plans from the Hub)
- ``weight_summary(model_dir, quant=None) -> WeightSummary``: safetensors headers, the index's
  ``total_size``, or GGUF tensor infos (pickled ``.bin`` files are never opened)
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError
from vmm.core.model import formats


@dataclass
class WeightSummary:
    parameters: int | None
    weight_bytes: int | None
    dtypes: dict[str, int] = field(default_factory=dict)   # dtype -> parameter count
    source: str = ""                                      # "safetensors headers", "index total_size", "gguf"


# safetensors dtype -> bytes per element (safetensors 0.5 src/tensor.rs, Dtype::size);
# sub-byte types count bits / 8 with the shape's last dimension packed.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "I64": 64, "U64": 64, "F64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "C64": 64,
}
# safetensors' own limit on the header (MAX_HEADER_SIZE in src/tensor.rs): 100 MB.
MAX_SAFETENSORS_HEADER = 100_000_000




def _bad_header(path: Path, why: str) -> IntegrityError:
    return IntegrityError(f"invalid safetensors header ({why})", str(path),
                          "the file is truncated or corrupt: re-download it with `vmm pull`")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, validated against the file size.

    Reads the 8-byte little-endian length and the header only, never the data; the checks
    are :func:`parse_safetensors_header`'s.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise _bad_header(path, f"file of {size} bytes")
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                raise _bad_header(path, f"header length {length} is absurd")
            if 8 + length > size:
                raise _bad_header(path, f"header of {length} bytes beyond the end of a {size}-byte file")
            raw = handle.read(length)
    except OSError as exc:
        raise IntegrityError("cannot read", str(path), exc.strerror or str(exc)) from exc
    return parse_safetensors_header(raw, size, str(path))


def safetensors_header_length(prefix: bytes, file_size: int, name: str) -> int:
    """The header length from a file's first 8 bytes, checked against the file size."""
    if file_size < 8 or len(prefix) < 8:
        raise _bad_header(Path(name), f"file of {file_size} bytes")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_SAFETENSORS_HEADER:
        raise _bad_header(Path(name), f"header length {length} is absurd")
    if 8 + length > file_size:
        raise _bad_header(Path(name), f"header of {length} bytes beyond the end of a {file_size}-byte file")
    return length


def parse_safetensors_header(raw: bytes, file_size: int, name: str) -> dict[str, Any]:
    """Validate the JSON header bytes of a safetensors file of ``file_size`` bytes.

    Checks what the reference loader checks (safetensors 0.5 ``SafeTensors::read_metadata``
    / ``Metadata::validate``): JSON object, known dtypes, offsets contiguous from 0, each
    tensor's byte count equal to its shape's, and the data region ending exactly at the end
    of the file. Used on local files and on headers read from the Hub by HTTP Range.
    """
    path = Path(name)
    length = len(raw)
    size = file_size
    try:
        header = jsonfile.loads(raw)
    except jsonfile.JsonDepthError as exc:
        raise _bad_header(path, f"JSON {exc}") from None
    except ValueError:
        raise _bad_header(path, "not JSON") from None
    if not isinstance(header, dict):
        raise _bad_header(path, "not a JSON object")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _bad_header(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BITS:
            raise _bad_header(path, f"unknown dtype {dtype!r} for {name!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad_header(path, f"bad shape for {name!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or offsets[0] < 0 or offsets[1] < offsets[0]):
            raise _bad_header(path, f"bad data_offsets for {name!r}")
        nbytes = (math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype] + 7) // 8
        if offsets[1] - offsets[0] != nbytes:
            raise _bad_header(path, f"{name!r} spans {offsets[1] - offsets[0]} bytes, its shape needs {nbytes}")
        entries.append((offsets[0], offsets[1], name))
    entries.sort()
    end = 0
    for start, stop, name in entries:
        if start != end:
            raise _bad_header(path, f"data offsets not contiguous at {name!r}")
        end = stop
    if 8 + length + end != size:
        if 8 + length + end > size:
            raise _bad_header(path, f"tensors need {8 + length + end} bytes, the file has {size}")
        raise _bad_header(path, f"{size - 8 - length - end} bytes after the last tensor")
    return header


def _sum_headers(paths: list[Path]) -> WeightSummary:
    return sum_safetensors_headers([read_safetensors_header(path) for path in paths])


def sum_safetensors_headers(headers: list[dict[str, Any]]) -> WeightSummary:
    """Parameters, bytes and dtypes of parsed safetensors headers (one per shard)."""
    params, nbytes, dtypes = 0, 0, {}
    for header in headers:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = math.prod(info["shape"])
            params += n
            nbytes += info["data_offsets"][1] - info["data_offsets"][0]
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + n
    return WeightSummary(params, nbytes, dtypes, "safetensors headers")


def _index_total(model_dir: Path, index_name: str) -> int | None:
    try:
        doc = formats.read_index(model_dir / index_name)
    except IntegrityError:
        return None
    total = (doc.get("metadata") or {}).get("total_size") if isinstance(doc.get("metadata"), dict) else None
    return int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) and total >= 0 else None


def weight_summary(model_dir: Path, quant: str | None = None) -> WeightSummary:
    """Parameters and weight bytes from the weights' own headers, never from guesses.

    safetensors: every shard's header (a missing shard falls back to the index's
    ``metadata.total_size`` for bytes, parameters unknown). pytorch: the index's
    ``total_size``, else the files' sizes; the pickles are never opened. GGUF: the tensor
    infos of the chosen quant's parts. A directory with several formats is summarised by the
    one vLLM would load: safetensors, then pytorch, then GGUF.
    """
    model_dir = Path(model_dir)
    top = formats.top_files(model_dir)
    kinds = formats.formats_present(model_dir, top)
    if "safetensors" in kinds:
        report = formats.shard_report(model_dir)
        files = [f for f in report.shard_files if f.endswith(".safetensors")]
        if not files or report.index == formats.PYTORCH_INDEX:
            files = [n for n in top if formats.ST_SHARD_RE.match(n)] or \
                    (["model.safetensors"] if "model.safetensors" in top else [n for n in top if n.endswith(".safetensors")])
        if report.index == formats.SAFETENSORS_INDEX and report.missing:
            return WeightSummary(None, _index_total(model_dir, formats.SAFETENSORS_INDEX), {}, "index total_size")
        return _sum_headers([model_dir / f for f in files])
    if "pytorch" in kinds:
        if formats.PYTORCH_INDEX in top:
            total = _index_total(model_dir, formats.PYTORCH_INDEX)
            if total is not None:
                return WeightSummary(None, total, {}, "index total_size")
        size = sum((model_dir / n).stat().st_size for n in top if formats.is_pytorch_weight(n))
        return WeightSummary(None, size, {}, "file sizes")
    if "gguf" in kinds:
        from vmm.core.model import gguf_meta

        chosen = formats.select_gguf(model_dir, quant)
        params, nbytes, dtypes = 0, 0, {}
        from gguf.constants import GGMLQuantizationType

        for part in chosen.parts:
            for t in gguf_meta.read_gguf(part).tensors:
                params += t.n_elements
                nbytes += t.n_bytes or 0
                try:
                    tname = GGMLQuantizationType(t.ggml_type).name
                except ValueError:
                    tname = str(t.ggml_type)
                dtypes[tname] = dtypes.get(tname, 0) + t.n_elements
        return WeightSummary(params, nbytes, dtypes, "gguf")
    return WeightSummary(None, None, {}, "")
