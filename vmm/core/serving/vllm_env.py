"""The vLLM that ``vmm serve`` would run: where it is, which version, CPU or GPU build.

vLLM is an optional extra and usually lives in its own virtualenv: vmm finds the ``vllm``
executable on PATH and asks *that* environment, without importing vLLM into vmm (importing
it takes seconds and pulls in torch). Facts from vllm-cpu 0.32.0 (docs/e2e.md):

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
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vmm.core import settings
from vmm.core.errors import IncompatibleError, VllmMissingError

INSTALL_HINT = "pip install 'vllm-model-manager[vllm]' (or scripts/vllm-cpu-env for the CPU build), then put `vllm` on PATH"


@dataclass(frozen=True)
class VllmInstall:
    executable: str
    python: str | None          # the interpreter of vLLM's environment (from the shebang)
    version: str | None         # "0.32.0" (local suffixes such as +cpu stripped)
    distribution: str | None    # "vllm" or "vllm-cpu"
    is_cpu: bool


def vllm_executable() -> str | None:
    return shutil.which("vllm")


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


_PROBE = r"""
import importlib.metadata as m, json
out = {}
for dist in ("vllm-cpu", "vllm"):
    try:
        out[dist] = m.version(dist)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


@lru_cache(maxsize=8)
def _probe(python: str) -> dict[str, str]:
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def find_vllm() -> VllmInstall | None:
    """The vLLM on PATH, or None. Reads distribution metadata; never imports vLLM."""
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


def installed_vllm_version() -> str | None:
    install = find_vllm()
    return install.version if install else None


def vllm_is_cpu_build() -> bool:
    install = find_vllm()
    return bool(install and install.is_cpu)


def require_vllm() -> VllmInstall:
    install = find_vllm()
    if install is None:
        raise VllmMissingError("vllm is not installed or not on PATH", "vllm", INSTALL_HINT)
    return install


_VALIDATE = r"""
import argparse, json, sys
argvs = json.loads(sys.argv[1])
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM < 0.32
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # vLLM < 0.11
    from vllm.utils import FlexibleArgumentParser

class Refused(Exception):
    pass

parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
def error(message):
    raise Refused(message)
parser.error = error
verdicts = []
for argv in argvs:
    try:
        validate_parsed_serve_args(parser.parse_args(argv))
    except (Refused, TypeError, ValueError) as exc:
        verdicts.append({"ok": False, "error": str(exc)})
    else:
        verdicts.append({"ok": True})
print(json.dumps(verdicts))
"""


def serve_arg_errors(argvs: list[list[str]], vllm_python: str | None = None,
                     timeout_s: float = 180) -> list[str | None]:
    """Parse each ``vllm serve ...`` argv with the installed vLLM's own parser, in one process
    (importing the parser costs seconds); return None or vLLM's complaint for each."""
    install = require_vllm() if vllm_python is None else None
    python = vllm_python or (install.python if install else None)
    if not python:
        raise VllmMissingError("cannot find the Python of the vllm executable",
                               install.executable if install else "vllm", INSTALL_HINT)
    stripped = []
    for argv in argvs:
        words = list(argv)
        if len(words) >= 2 and Path(words[0]).name == "vllm" and words[1] == "serve":
            words = words[2:]
        stripped.append(words)
    env = settings.child_environment({"VLLM_NO_USAGE_STATS": "1"})
    try:
        proc = subprocess.run([python, "-c", _VALIDATE, json.dumps(stripped)], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise IncompatibleError("vLLM's argument parser did not answer", python,
                                f"it ran longer than {timeout_s:.0f}s") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    try:
        verdicts = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise IncompatibleError("vLLM's argument parser failed", python, tail or f"exit {proc.returncode}") from None
    return [None if v.get("ok") else " ".join(str(v.get("error", "")).split()) for v in verdicts]


def validate_serve_args(argv: list[str], vllm_python: str | None = None, timeout_s: float = 180) -> None:
    """Check ``vllm serve ...`` against the installed vLLM's own parser; exit 6 when refused.

    Catches a flag that a vLLM version renamed or removed before a launch fails with it.
    """
    [error] = serve_arg_errors([argv], vllm_python, timeout_s)
    if error:
        version = installed_vllm_version() if vllm_python is None else None
        raise IncompatibleError(
            f"vLLM{' ' + version if version else ''} refuses the serve arguments", error,
            "a flag may have been renamed in this vLLM version; check `vllm serve --help`",
        )


def cached_probe(python: str, code: str, marker: str, what: str, version: str, cache_dir: Path | None,
                 timeout_s: float, valid=lambda doc: isinstance(doc, dict)) -> dict:
    """Run ``code`` in the installed vLLM's Python and parse the JSON it prints after ``marker``
    on one line; cached per vLLM version as ``<cache_dir>/vllm-<what>-<version>.json`` (vLLM's
    import costs seconds). :class:`RuntimeError` naming ``what`` when the probe fails."""
    import re

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
