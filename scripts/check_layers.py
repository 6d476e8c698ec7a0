#!/usr/bin/env python3
"""The import contract of vmm's layers, checked by walking every import (lazy ones too).

    python scripts/check_layers.py [PACKAGE_DIR]      (default: vmm/ of this checkout)

Exit 1 with one line per violation. The suite runs it (tests/test_architecture.py), so a
wrong import fails CI. Layers, lowest first; a module may import its own layer and lower:

    0 base       vmm.core.{errors,settings,units,hashing,names,fsutil,jsonfile,http_names}
    1 store base vmm.core.store.{paths,manifests,locking,local}
    2 model      vmm.core.model.*        (config, formats, gguf_meta, templates, ...)
    3 store      vmm.core.store.*        (catalog, usage, gc, dedup, adopt)
    4 hub        vmm.core.hub.*          (client, selection, transfer, pull, updates)
    4b oci       vmm.core.oci.*          (reference, artifact, auth, registry, layout, install, ops)
    5 serving    vmm.core.serving.*      (vllm_env, compat, gpu, planner, launcher, ...)
    6 check      vmm.core.check
    7 render     vmm.render.*
    8 cli        vmm.cli.*, vmm._typer_fast, vmm.__main__

Besides: the core (vmm.core.*) never imports typer, rich, click, vmm.render or vmm.cli, and
no two vmm modules import each other in a cycle, directly or through others (a cycle hidden
by a lazy import is still a cycle).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("vmm", "vmm.core", "vmm.core.errors", "vmm.core.settings", "vmm.core.units",
              "vmm.core.hashing", "vmm.core.names", "vmm.core.fsutil", "vmm.core.jsonfile",
              "vmm.core.http_names")),
    ("store base", ("vmm.core.store.paths", "vmm.core.store.manifests", "vmm.core.store.locking",
                    "vmm.core.store.local")),
    ("model", ("vmm.core.model",)),
    ("store", ("vmm.core.store",)),
    ("hub", ("vmm.core.hub",)),
    ("oci", ("vmm.core.oci",)),
    ("serving", ("vmm.core.serving",)),
    ("check", ("vmm.core.check",)),
    ("render", ("vmm.render",)),
    ("cli", ("vmm.cli", "vmm._typer_fast", "vmm.__main__")),
]
CORE_FORBIDDEN = ("typer", "rich", "click", "vmm.render", "vmm.cli")


def layer_of(module: str) -> int:
    """The layer of a module: an exact name first, else the longest package prefix."""
    best, best_len = -1, -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix and len(prefix) + 1 > best_len:
                best, best_len = index, len(prefix) + 1
            elif module.startswith(prefix + ".") and len(prefix) > best_len and prefix not in ("vmm", "vmm.core"):
                best, best_len = index, len(prefix)
    if best < 0:
        raise ValueError(f"{module} is in no layer: add it to LAYERS in scripts/check_layers.py")
    return best


def modules(package_dir: Path) -> dict[str, Path]:
    base = package_dir.parent
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, module: str, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in known else base, node.lineno))
    return out


def violations(package_dir: Path) -> list[str]:
    known = modules(package_dir)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        mine = layer_of(module)
        for target, line in imports_of(path, module, known):
            where = f"{path}:{line}"
            if module.startswith("vmm.core") and any(target == f or target.startswith(f + ".") for f in CORE_FORBIDDEN):
                problems.append(f"{where}: {module} (core) imports {target}: the core never renders or parses a CLI")
                continue
            if not (target == "vmm" or target.startswith("vmm.")):
                continue
            if target not in known:
                continue
            theirs = layer_of(target)
            if theirs > mine:
                problems.append(f"{where}: {module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), "
                                "a higher layer")
            if target != module and not known[target].name == "__init__.py":
                graph[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    package_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "vmm"
    problems = violations(package_dir)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
