#!/usr/bin/env python3
"""Store the openAPIV3Schema of operator CRDs in tests/data, small enough to commit.

Usage: ``python scripts/gen_crd_schemas.py GIT_DIR COMMIT CRD_PATH OUT_NAME [CRD_PATH OUT_NAME ...]``
where GIT_DIR is a (bare) clone of the operator's repository (e.g. sgl-project/ome, kserve/kserve).

For each CRD: the storage version's ``schema.openAPIV3Schema``, every ``description`` removed
(prose, most of the bytes), then every subtree of more than 2 KB that occurs more than once
(the PodSpec and container schemas repeat many times) moved to ``$defs`` and replaced by a
``$ref``: a lossless rewrite, the document validates exactly what the CRD's schema validates.
Written as JSON (tests/data/<OUT_NAME>.json) with a ``$comment`` naming the source; record the
repository, path and commit in tests/data/SOURCES-k8s.md.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"
MIN_SHARED_BYTES = 2048


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def _key(node) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _subtrees(node, out: Counter) -> None:
    if isinstance(node, dict):
        out[_key(node)] += 1
        for value in node.values():
            _subtrees(value, out)
    elif isinstance(node, list):
        for value in node:
            _subtrees(value, out)


def _replace(node, target: str, ref: dict):
    if isinstance(node, dict):
        if _key(node) == target:
            return dict(ref)
        return {k: _replace(v, target, ref) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, target, ref) for v in node]
    return node


def share(schema: dict) -> dict:
    """Move repeated large subtrees to $defs, largest first, until none repeats."""
    defs: dict[str, dict] = {}
    while True:
        counts: Counter = Counter()
        _subtrees(schema, counts)
        for body in defs.values():
            _subtrees(body, counts)
        repeated = [k for k, n in counts.items() if n > 1 and len(k) > MIN_SHARED_BYTES]
        if not repeated:
            break
        target = max(repeated, key=len)
        name = "d" + hashlib.sha256(target.encode()).hexdigest()[:10]
        ref = {"$ref": f"#/$defs/{name}"}
        schema = _replace(schema, target, ref)
        defs = {k: _replace(v, target, ref) for k, v in defs.items()}
        defs[name] = json.loads(target)
    return {**schema, "$defs": defs} if defs else schema


def crd_schema(git_dir: str, commit: str, path: str) -> tuple[dict, str, str]:
    text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    crd = yaml.safe_load(text)
    [version] = [v for v in crd["spec"]["versions"] if v.get("storage")]
    digest = hashlib.sha256(text.encode()).hexdigest()
    return share(strip(version["schema"]["openAPIV3Schema"])), version["name"], digest


def main(argv: list[str]) -> None:
    git_dir, commit, *pairs = argv
    for path, name in zip(pairs[::2], pairs[1::2]):
        schema, version, digest = crd_schema(git_dir, commit, path)
        doc = {"$comment": f"{path} at {commit} (storage version {version}; sha256 of the CRD file {digest}): "
                           "openAPIV3Schema, descriptions removed, repeated subtrees in $defs "
                           "(scripts/gen_crd_schemas.py)", **schema}
        out = OUT / f"{name}.json"
        out.write_text(json.dumps(doc, sort_keys=False, separators=(",", ":")) + "\n")
        print(f"{out.name}: {out.stat().st_size} bytes, {len(schema.get('$defs', {}))} shared subtrees, sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
