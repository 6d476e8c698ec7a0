"""Which files of a Hub repo a pull fetches: duplicate weight formats, GGUF ``:QUANT``,
``--include``/``--exclude`` globs."""

from __future__ import annotations

import fnmatch

from vmm.core.errors import NotFoundError, UsageError
from vmm.core.hub.client import RemoteFile
from vmm.core.model import formats

# Duplicate formats skipped in a safetensors repo unless --all-files.
DUPLICATE_PATTERNS = (
    "pytorch_model*.bin", "pytorch_model*.bin.index.json", "*.pth", "*.pt", "consolidated*",
    "original/*", "tf_model*.h5", "flax_model*.msgpack", "*.ckpt", "onnx/*", "openvino/*",
    "*.onnx", "*.onnx_data", "coreml/*", "rust_model.ot",
)


def _matches(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def is_duplicate_format(path: str) -> bool:
    return _matches(path, DUPLICATE_PATTERNS) or path.startswith("original/")


def _pick_gguf(files: list[RemoteFile], ggufs: list[RemoteFile], quant: str | None,
               include: list[str], repo_id: str) -> tuple[list[RemoteFile], str | None]:
    """Of a GGUF repo: every non-GGUF file plus the GGUF files of one quantization."""
    quants = sorted({formats.gguf_quant_of(f.path) or f.path for f in ggufs})
    chosen = None
    if quant:
        wanted = quant.upper()
        picked = [f for f in ggufs if (formats.gguf_quant_of(f.path) or "").upper() == wanted]
        if not picked:
            raise NotFoundError("quantization not in the repo", f"{repo_id}:{quant}",
                                f"choose one of: {', '.join(quants)}")
        chosen = wanted
    elif include:
        picked = ggufs
    elif len(quants) > 1:
        raise UsageError("the GGUF repo has several quantizations", repo_id,
                         f"choose one with {repo_id}:QUANT, one of: {', '.join(quants)}")
    else:
        picked = ggufs
        chosen = formats.gguf_quant_of(ggufs[0].path)
    keep = {f.path for f in picked}
    return [f for f in files if not f.path.lower().endswith(".gguf") or f.path in keep], chosen


def select_files(files: list[RemoteFile], quant: str | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None, all_files: bool = False,
                 repo_id: str = "") -> tuple[list[RemoteFile], str | None]:
    """The files a pull fetches, and the GGUF quantization chosen (if any)."""
    include, exclude = list(include or []), list(exclude or [])
    chosen_quant = None
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    selected = list(files)
    if ggufs and not all_files:
        selected, chosen_quant = _pick_gguf(files, ggufs, quant, include, repo_id)
    elif quant:
        raise UsageError("':QUANT' applies to GGUF repos only", f"{repo_id}:{quant}",
                         "drop the ':QUANT' suffix")
    if any(f.path.endswith(".safetensors") for f in files) and not all_files:
        selected = [f for f in selected if not is_duplicate_format(f.path)]
    if include:
        selected = [f for f in selected if _matches(f.path, include)]
    if exclude:
        selected = [f for f in selected if not _matches(f.path, exclude)]
    return selected, chosen_quant
