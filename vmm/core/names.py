"""Model names <-> directory names under the models root, with the safety checks.

A Hub id ``org/name`` lives in ``<root>/org--name``. The Hub itself forbids ``--`` and ``..``
inside repo names (huggingface_hub ``validate_repo_id``), so the mapping is reversible.
Accepted forms: ``org/name``, ``org/name@REVISION``, ``org/name:QUANT`` (GGUF), both
suffixes together in either order, and the directory name ``org--name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vmm.core import settings
from vmm.core.errors import UsageError

SEPARATOR = "--"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Git ref names: no control characters, space, ~ ^ : ? * [ \ and no "..", "@{", "//".
_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name. ``repo_id`` is ``org/name`` (or ``name`` for org-less repos)."""

    repo_id: str
    revision: str | None = None
    quant: str | None = None

    @property
    def dir_name(self) -> str:
        return self.repo_id.replace("/", SEPARATOR)

    def __str__(self) -> str:
        text = self.repo_id
        if self.quant:
            text += f":{self.quant}"
        if self.revision:
            text += f"@{self.revision}"
        return text


def _refuse(name: str, why: str) -> UsageError:
    shown = name.encode("unicode_escape").decode("ascii")
    return UsageError(
        f"unsafe or malformed model name ({why})",
        repr(shown)[1:-1] if shown else "''",
        "use a Hub id like org/name, optionally @REVISION or :QUANT",
    )


def _check_part(name: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise _refuse(name, "empty part or '..'")
    if SEPARATOR in part or ".." in part:
        raise _refuse(name, "'--' and '..' are not allowed inside a part")
    if not _PART.match(part):
        raise _refuse(name, "only letters, digits, '.', '_' and '-' are allowed")
    if part.endswith(".") or part.endswith("-"):
        raise _refuse(name, "a part may not end with '.' or '-'")


def parse_model_name(name: str) -> ModelRef:
    """Parse and validate a model name; raise :class:`UsageError` (exit 2) when unsafe."""
    if not isinstance(name, str) or not name:
        raise _refuse(str(name or ""), "empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _refuse(name, "control character")
    if "\\" in name:
        raise _refuse(name, "backslash path separator")
    if name.startswith("/") or name.startswith("~"):
        raise _refuse(name, "absolute path")
    base, revision, quant = name, None, None
    if "@" in base:
        base, _, revision = base.partition("@")
        if ":" in revision:
            revision, _, quant = revision.partition(":")
        if not revision or not _REVISION.match(revision) or ".." in revision or "//" in revision \
                or revision.startswith("/") or revision.endswith("/"):
            raise _refuse(name, "malformed revision")
    if ":" in base:
        base, _, quant = base.partition(":")
    if quant is not None and not _QUANT.match(quant):
        raise _refuse(name, "malformed quantization after ':'")
    parts = base.split("/")
    if len(parts) == 1 and SEPARATOR in base:
        # The directory-name form: org--name.
        parts = base.split(SEPARATOR)
        if len(parts) != 2:
            raise _refuse(name, "a directory name has exactly one '--'")
    if len(parts) > 2:
        raise _refuse(name, "at most one '/' (org/name)")
    for part in parts:
        _check_part(name, part)
    return ModelRef("/".join(parts), revision, quant)


def dir_name_to_repo_id(dir_name: str) -> str | None:
    """``org--name`` -> ``org/name``; None when the directory name is not of that form."""
    try:
        ref = parse_model_name(dir_name)
    except UsageError:
        return None
    return ref.repo_id if ref.dir_name == dir_name else None


def get_model_path_from_name(model_name: str, root: Path | None = None) -> Path:
    """``org/name`` -> ``<root>/org--name``. The result never leaves the root."""
    ref = parse_model_name(model_name)
    base = (root or settings.models_root()).absolute()
    path = base / ref.dir_name
    # Defence in depth: the checks above already make this impossible.
    if path.parent != base:
        raise _refuse(model_name, "escapes the models root")
    return path


def safe_repo_path(model_dir: Path, repo_path: str) -> Path:
    """Where a repo file ``repo_path`` goes inside ``model_dir``; refuse anything escaping it."""
    from vmm.core.errors import IntegrityError

    bad = (
        not repo_path
        or repo_path.startswith("/")
        or "\\" in repo_path
        or "\x00" in repo_path
        or any(ord(c) < 32 for c in repo_path)
        or any(p in ("", ".", "..") for p in repo_path.split("/"))
        or re.match(r"^[A-Za-z]:", repo_path) is not None
        or repo_path.split("/")[0] == ".vmm"
    )
    if bad:
        raise IntegrityError(
            "repo file path would escape the model directory",
            repr(repo_path),
            "the server sent an unsafe path; nothing was written",
        )
    return model_dir / repo_path
