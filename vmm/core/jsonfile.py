"""Parsing JSON that came from a model folder or the Hub, with its nesting depth bounded.

Python's ``json`` decoder recurses once per nesting level: a config.json nested 100,000
levels deep raises ``RecursionError`` (and anything that walks the result recursively
would too). No real model file nests deeper than a handful of levels (config.json,
tokenizer_config.json, shard indexes, safetensors headers, Hub answers), so vmm refuses a
document deeper than :data:`MAX_DEPTH` before parsing it, in linear time: strings are cut
out with one regular expression, then the brackets that remain are counted.

Every JSON document vmm reads from a model folder or the Hub goes through :func:`loads`
(bytes or text, raises :class:`JsonDepthError`/``ValueError``) or :func:`load_file`
(raises :class:`~vmm.core.errors.IntegrityError` naming the file, exit 5).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vmm.core.errors import IntegrityError

MAX_DEPTH = 64

# A JSON string: a quote, then runs of ordinary characters or backslash escapes, a quote
# ("unrolled loop" form: no backtracking on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKETS = bytes.maketrans(b"{}", b"[]")


class JsonDepthError(ValueError):
    """A JSON document nested deeper than allowed (a ``ValueError``, like any bad JSON)."""

    def __init__(self, depth_limit: int) -> None:
        super().__init__(f"nested deeper than {depth_limit} levels")
        self.depth_limit = depth_limit


def nesting_depth(data: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of arrays/objects in ``data``, counted up to ``limit + 1``.

    Brackets inside strings do not count. On malformed JSON the figure is approximate
    (the parser rejects such a document anyway).
    """
    skeleton = _STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    # Each pass deletes every innermost pair, i.e. one level of the tree: the number of
    # passes is the depth. Every pass runs in C; at most ``limit + 1`` of them.
    depth = 0
    while skeleton and depth <= limit:
        shorter = skeleton.replace(b"[]", b"")
        if len(shorter) == len(skeleton):
            break                      # unbalanced: malformed JSON, the parser says so
        skeleton, depth = shorter, depth + 1
    return depth


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses a document nested deeper than ``max_depth``.

    Raises :class:`JsonDepthError` (a ``ValueError``) for too deep a document and
    ``ValueError`` for malformed JSON, as ``json.loads`` does.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nesting_depth(raw, max_depth) > max_depth:
        raise JsonDepthError(max_depth)
    try:
        return json.loads(data)
    except RecursionError:         # belt and braces: the pre-scan should have caught it
        raise JsonDepthError(max_depth) from None


def load_file(path: Path, what: str = "JSON", max_depth: int = MAX_DEPTH,
              hint: str = "re-download it with `vmm pull`, or fix the file") -> Any:
    """Parse a JSON file; unreadable, malformed or too deep is an :class:`IntegrityError`
    (exit 5) naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise IntegrityError("cannot read", str(path), exc.strerror or str(exc)) from exc
    try:
        return loads(raw, max_depth)
    except JsonDepthError as exc:
        raise IntegrityError(f"malformed {what} ({exc})", str(path), hint) from None
    except ValueError as exc:
        raise IntegrityError(f"malformed {what} ({exc})", str(path), hint) from exc
