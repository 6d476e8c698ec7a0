"""Shared by the tests of `vmm serve --emit` outputs (test_deploy.py, test_operators.py): the
models they plan for and the YAML they parse."""

from __future__ import annotations

from pathlib import Path

import yaml

import builders as b
from conftest import run_vmm

QWEN = "Qwen/Qwen2-7B-Instruct"


def make_models(root: Path) -> Path:
    """A pulled Qwen2-7B-Instruct (4 sparse shards, a manifest) and a hand-made Mistral folder."""
    b.make_model(root, QWEN, cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    b.make_hand_made_dir(root, "my-finetune", cfg=b.MISTRAL_7B_V02, shards=2)
    return root


def emit(*args: str) -> list[dict]:
    """`vmm serve ARGS` (an --emit of YAML documents), parsed; plain YAML, no anchors."""
    run = run_vmm("serve", *args)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.startswith("# "), run.stdout[:200]
    assert "&id0" not in run.stdout and "*id0" not in run.stdout
    return [d for d in yaml.safe_load_all(run.stdout) if d is not None]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}
