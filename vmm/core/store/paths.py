"""Where things live in a models root: the one copy of every path rule.

Layout::

    <root>/org--name/                       one model (Hub files as the Hub names them)
    <root>/org--name/.vmm/manifest.json     what vmm knows about it (managed models only)
    <root>/org--name/.vmm/manifest.lock     held for the milliseconds of a manifest update
    <root>/org--name/.vmm/partial/          a pull's resumable data (gc removes stale ones)
    <root>/.vmm/locks/org--name.lock        one lock file per model
    <root>/.vmm/pins/org--name              models gc never removes (hand-made ones too)
    <root>/.org--name.rm-*                  a model being deleted (renamed first, then removed)
    <root>/.org--name.import-<pid>          an import being staged (gc removes stale ones)
    <state>/run/<id>.json                   a server `vmm serve` started (runtime record)
    <state>/logs/<dir>-<port>.log           a detached server's log
    <state>/cache/                          what the installed vLLM said (registry, parsers)

``<state>`` is ``$VMM_STATE_DIR``, else ``<root>/.vmm`` (:func:`vmm.core.settings.state_dir`).

Directories put in the root by hand have no manifest and are still first-class models.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmm.core import settings

META_DIR = ".vmm"
MANIFEST_NAME = "manifest.json"
MANIFEST_LOCK_NAME = "manifest.lock"
PARTIAL_DIR = "partial"
PINS_DIR = "pins"
LOCKS_DIR = "locks"
TRASH_MARK = ".rm-"     # marks a model directory renamed away for deletion: .<dir>.rm-<tag>


def manifest_path(model_dir: Path) -> Path:
    return model_dir / META_DIR / MANIFEST_NAME


def manifest_lock_path(model_dir: Path) -> Path:
    return model_dir / META_DIR / MANIFEST_LOCK_NAME


def partial_dir(model_dir: Path) -> Path:
    return model_dir / META_DIR / PARTIAL_DIR


def run_dir(root: Path) -> Path:
    return settings.state_dir(root) / "run"


def logs_dir(root: Path) -> Path:
    return settings.state_dir(root) / "logs"


def cache_dir(root: Path) -> Path:
    return settings.state_dir(root) / "cache"


def lock_path(root: Path, dir_name: str) -> Path:
    return root / META_DIR / LOCKS_DIR / f"{dir_name}.lock"


def pin_path(root: Path, dir_name: str) -> Path:
    return root / META_DIR / PINS_DIR / dir_name


def trash_path(root: Path, dir_name: str, tag: str) -> Path:
    """The hidden name a model directory is renamed to before it is removed."""
    return root / f".{dir_name}{TRASH_MARK}{tag}"


def trash_glob(dir_name: str) -> str:
    """Glob (relative to the root) of every leftover delete of one model."""
    return f".{dir_name}{TRASH_MARK}*"


def is_trash(name: str) -> bool:
    """A directory entry left by an interrupted delete: never a model, never counted."""
    return name.startswith(".") and TRASH_MARK in name


def import_staging(root: Path, dir_name: str, pid: int) -> Path:
    """Where ``vmm import`` assembles a model before renaming it into place."""
    return root / f".{dir_name}.import-{pid}"


def import_staging_owner(name: str) -> str | None:
    """The model directory name an import staging entry belongs to, else None."""
    match = re.fullmatch(r"\.(.+)\.import-\d+", name)
    return match.group(1) if match else None
