"""Which vLLM is targeted: the one ``vmm serve`` would run (where, which version, CPU or
GPU build), and the one rule for judging a model against it.

The answer is :func:`find_vllm` alone: the ``vllm`` executable on PATH, else the one beside
vmm's own interpreter (``pip install 'vmm[vllm]'`` into a venv that is not activated). vLLM
usually lives in a virtualenv of its own, so vmm asks *that* environment (the executable's
shebang) and never imports vLLM itself (importing it takes seconds and pulls in torch).
Whatever vmm judges against that vLLM (its architecture registry, its parser names) goes
through :func:`for_target`: the installed vLLM's own answer when it is the target, else the
snapshot bundled for the nearest older version (:func:`nearest_snapshot`).

Facts from vllm-cpu 0.32.0 (docs/e2e.md):

- the CPU build is published as the distribution ``vllm-cpu``; its CLI asks for the
  distribution ``vllm``, and picks the CPU platform only when that version contains "cpu"
  (``vllm/platforms/__init__.py``, ``vllm_version_matches_substr``);
- the serve argument parser is ``make_arg_parser`` in ``vllm/entrypoints/launchers/cli_args.py``
  (0.32; ``vllm/entrypoints/openai/cli_args.py`` before), checked after parsing by
  ``validate_parsed_serve_args``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

from vmm.core import settings
from vmm.core.errors import UsageError, VllmMissingError

T = TypeVar("T")

INSTALL_HINT = "pip install 'vllm-model-manager[vllm]' (or scripts/vllm-cpu-env for the CPU build), then put `vllm` on PATH"


@dataclass(frozen=True)
class VllmInstall:
    executable: str
    python: str | None          # the interpreter of vLLM's environment (from the shebang)
    version: str | None         # "0.32.0" (local suffixes such as +cpu stripped)
    distribution: str | None    # "vllm" or "vllm-cpu"
    is_cpu: bool


def version_key(version: str) -> tuple[int, ...]:
    """'0.32.0+cpu' -> (0, 32, 0); pre/post/local parts are ignored; exit 2 on garbage."""
    release = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version or "")
    if not release:
        raise UsageError("not a vLLM version", repr(version), "write it like 0.33.0")
    parts = tuple(int(p) for p in release.group(1).split("."))
    return parts + (0,) * (3 - len(parts)) if len(parts) < 3 else parts


def vllm_executable() -> str | None:
    """``vllm`` on PATH, else beside vmm's own interpreter."""
    found = shutil.which("vllm")
    if found:
        return found
    beside = Path(sys.executable).parent / "vllm"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _shebang_python(executable: str) -> str | None:
    try:
        with open(executable, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0] if os.access(words[0], os.X_OK) else None


# Distribution metadata first (no import); a vLLM without a record (a source checkout on
# PYTHONPATH) is asked for ``vllm.__version__``, which imports it: slow, but only then.
_PROBE = r"""
import importlib.metadata as m, json
out = {}
for dist in ("vllm-cpu", "vllm"):
    try:
        out[dist] = m.version(dist)
    except m.PackageNotFoundError:
        pass
if not out:
    try:
        import vllm
        out["vllm"] = vllm.__version__
    except Exception:
        pass
print("VMM-VLLM:" + json.dumps(out))
"""


@lru_cache(maxsize=8)
def _probe(python: str) -> dict[str, str]:
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VMM-VLLM:")), None)
        return json.loads(line.removeprefix("VMM-VLLM:")) if proc.returncode == 0 and line else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def find_vllm() -> VllmInstall | None:
    """The targeted vLLM (module docstring), or None. Reads distribution metadata."""
    exe = vllm_executable()
    if exe is None:
        return None
    python = _shebang_python(exe)
    found = _probe(python) if python else {}
    dist = "vllm-cpu" if "vllm-cpu" in found else ("vllm" if "vllm" in found else None)
    raw = found.get(dist) if dist else None
    is_cpu = dist == "vllm-cpu" or bool(raw and "cpu" in raw) or settings.vllm_target_device() == "cpu"
    version = raw.split("+", 1)[0] if raw else None
    return VllmInstall(exe, python, version, dist, is_cpu)


def nearest_snapshot(versions: list[str], version: str | None) -> tuple[str, str | None]:
    """Which bundled snapshot judges ``version``: the newest when None, the same release, else
    the nearest older one, else the oldest; and a note when it is not the same release."""
    ordered = sorted(versions, key=version_key)
    if version is None:
        return ordered[-1], None
    want = version_key(version)
    exact = [v for v in ordered if version_key(v) == want]
    if exact:
        return exact[0], None
    older = [v for v in ordered if version_key(v) <= want]
    if older:
        return older[-1], f"no snapshot of vLLM {version}; judged with {older[-1]}'s"
    return ordered[0], f"vLLM {version} is older than every snapshot; judged with {ordered[0]}'s"


def for_target(requested: str | None, cache_dir: Path | None,
               installed: Callable[[VllmInstall, Path | None], T],
               snapshot: Callable[[str | None], tuple[T, str | None]]) -> tuple[T, list[str]]:
    """What the target vLLM says: ``installed(install, cache_dir)`` when the installed vLLM
    is the target (``requested`` None or the same release), else (or when asking it fails,
    :class:`RuntimeError`) ``snapshot(version)``; with notes on how it was chosen."""
    notes: list[str] = []
    if requested is not None:
        version_key(requested)                       # exit 2 on garbage
    install = find_vllm()
    if install is not None and install.version and install.python and (
            requested is None or version_key(requested) == version_key(install.version)):
        try:
            return installed(install, cache_dir), notes
        except RuntimeError as exc:
            notes.append(f"{exc}; using the bundled snapshot")
            requested = requested or install.version
    elif requested is None:
        notes.append("vLLM is not installed here (--vllm-version judges another version)")
    value, note = snapshot(requested)
    if note:
        notes.append(note)
    return value, notes


def require_vllm() -> VllmInstall:
    install = find_vllm()
    if install is None:
        raise VllmMissingError("vllm is not installed or not on PATH", "vllm", INSTALL_HINT)
    return install


def cached_probe(python: str, code: str, marker: str, what: str, version: str, cache_dir: Path | None,
                 timeout_s: float, valid=lambda doc: isinstance(doc, dict)) -> dict:
    """Run ``code`` in the installed vLLM's Python and parse the JSON it prints after ``marker``
    on one line; cached per vLLM version as ``<cache_dir>/vllm-<what>-<version>.json`` (vLLM's
    import costs seconds). :class:`RuntimeError` naming ``what`` when the probe fails."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    cache = cache_dir / f"vllm-{what}-{safe}.json" if cache_dir else None
    if cache is not None:
        try:
            doc = json.loads(cache.read_text(encoding="utf-8"))
            if valid(doc):
                return doc
        except (OSError, ValueError):
            pass
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"reading the installed vLLM's {what} failed: {exc}") from exc
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(marker)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"reading the installed vLLM's {what} failed: {tail}")
    doc = json.loads(line.removeprefix(marker))
    if not valid(doc):
        raise RuntimeError(f"reading the installed vLLM's {what} failed: unexpected answer")
    if cache is not None:
        from vmm.core import fsutil

        try:
            fsutil.atomic_write_json(cache, doc)
        except OSError:
            pass
    return doc
