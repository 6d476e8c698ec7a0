"""README's template / check section shows real output."""

from __future__ import annotations

import pytest
from builders import TINY_LLAMA, config, make_demo_root, make_model
from conftest import REPO, run_vmm

from vmm.core.serving import compat, vllm_env

STABLELM = config(TINY_LLAMA, architectures=["StableLMEpochForCausalLM"], model_type="stablelm_epoch",
                  auto_map={"AutoConfig": "configuration_stablelm_epoch.StableLMEpochConfig",
                            "AutoModelForCausalLM": "modeling_stablelm_epoch.StableLMEpochForCausalLM"})


def _block(text: str, command: str) -> list[str]:
    from test_readme import _console_block

    return _console_block(text, command)


@pytest.fixture
def readme(monkeypatch):
    # The README shows a host without vLLM: judge against the bundled snapshot everywhere.
    monkeypatch.setattr(vllm_env, "find_vllm", lambda: None)
    return (REPO / "README.md").read_text()


def test_readme_template_block_is_real(tmp_path, readme):
    root = make_demo_root(tmp_path / "models")
    card = "You are Zed, the lighthouse keeper. Answer in riddles."
    run = run_vmm("--root", root, "template", "my-finetune", "--system", card)
    assert run.stdout.splitlines() == _block(readme, f'vmm template my-finetune --system "{card}"')


def test_readme_check_block_is_real(tmp_path, readme):
    root = make_demo_root(tmp_path / "models")
    run = run_vmm("--root", root, "check", "my-finetune")
    shown = _block(readme, 'vmm check my-finetune; echo "exit $?"')
    assert run.stdout.splitlines() == shown[:-2]
    assert run.stderr.strip() == shown[-2] and shown[-1] == f"exit {run.exit_code}"


def test_readme_stablelm_detail_is_real(tmp_path, readme):
    root = tmp_path / "models"
    make_model(root, "stabilityai/stablelm-3b-4e1t", cfg=STABLELM)
    run = run_vmm("--root", root, "check", "stabilityai/stablelm-3b-4e1t", "--json")
    assert run.exit_code == 6
    detail = next(c["detail"] for c in run.json()["checks"] if c["name"] == "vllm")
    command = ("vmm check stabilityai/stablelm-3b-4e1t --json | jq -r "
               "'.checks[] | select(.name == \"vllm\") | .detail'")
    assert _block(readme, command) == [detail]
