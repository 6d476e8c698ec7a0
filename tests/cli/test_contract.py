"""docs/contract.md is the contract scripts rely on: every key it lists is in the real output.

The keys are read from the page itself (each `<!-- contract: CMD -->` block), so a key added
to the docs without the code, or dropped from the code, fails here.
"""

from __future__ import annotations

import re

import pytest

import builders as b
import vmm
from conftest import REPO, contract_keys, run_vmm

DOC = (REPO / "docs" / "contract.md").read_text()


def nested_keys(doc, prefix="") -> set[str]:
    keys = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            keys.add(key)
            keys |= nested_keys(value)
    elif isinstance(doc, list):
        for item in doc:
            keys |= nested_keys(item)
    return keys


def test_the_contract_names_the_keys_every_document_has():
    every = DOC.split("Every document has", 1)[1].split("Required keys", 1)[0]
    assert '`"schema_version": 1`' in every and '`"vmm_version"`' in every


def test_version_names_the_distribution():
    run = run_vmm("--version")
    assert run.exit_code == 0
    assert run.stdout == f"vmm {vmm.__version__} ({vmm.DISTRIBUTION})\n"


def test_every_documented_command_has_a_block():
    assert set(re.findall(r"<!-- contract: (\w+) -->", DOC)) == {
        "ls", "shards", "inspect", "check", "template", "serve", "pull",
        "pull_oci", "push", "export", "import_oci"}     # the OCI four: tests/core/oci/test_registry.py


@pytest.fixture
def model(root):
    b.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=2,
                 extra_files={"tokenizer_config.json": '{"chat_template": "{% for m in messages %}'
                              '{{ m.role }}: {{ m.content }}\\n{% endfor %}", "eos_token": "</s>"}'})
    return "Qwen/Qwen2-7B-Instruct"


@pytest.mark.parametrize("command,args", [
    ("ls", []),
    ("shards", ["{model}"]),
    ("inspect", ["{model}"]),
    ("check", ["{model}", "--fast", "--vllm-version", "0.32.0"]),
    ("template", ["{model}"]),
    ("serve", ["{model}", "--dry-run", "--gpus", "1", "--gpu-memory", "80GiB"]),
])
def test_documented_keys_are_in_the_output(model, command, args):
    run = run_vmm(command, *[a.format(model=model) for a in args], "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["schema_version"] == 1
    assert doc["vmm_version"] == vmm.__version__       # which vmm printed it (issue 22)
    missing = contract_keys(command) - nested_keys(doc)
    assert not missing, f"docs/contract.md lists {sorted(missing)} for {command}, the output lacks them"


def test_documented_pull_keys_are_in_the_output(root, hub):
    hub.add_repo("org/tiny", {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"x" * 1000})
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    missing = contract_keys("pull") - set(run.json())
    assert not missing, missing
