"""Hostile configs: `vmm check`'s security check (vmm/core/model/security.py, docs/check.md).

Every model here is built by the test with a config an attacker would publish; the check must
fail with exit 5 naming the file, the key and the CVE, and pass the real configs in tests/data.
"""

from __future__ import annotations

import json

import pytest
from builders import QWEN2_TOKENIZER_CONFIG, TINY_LLAMA, make_safetensors_model
from conftest import REPO, assert_error_line, run_vmm

from vmm.core.model import security
from vmm.core.serving import vllm_env

TOK = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": QWEN2_TOKENIZER_CONFIG["chat_template"]}


@pytest.fixture(autouse=True)
def _judge_from_snapshot(monkeypatch):
    """Judge against the bundled snapshot even where a vLLM is installed (e2e environments)."""
    monkeypatch.setattr(vllm_env, "find_vllm", lambda: None)


def model(root, cfg_extra=None, tok=None, name="evil--model"):
    cfg = {**TINY_LLAMA, **(cfg_extra or {})}
    return make_safetensors_model(root / name, cfg, tokenizer_config=tok or TOK)


def security_check(root, name="evil--model"):
    run = run_vmm("check", name, "--fast", "--json")
    doc = json.loads(run.stdout)
    [sec] = [c for c in doc["checks"] if c["name"] == "security"]
    return run, sec


@pytest.mark.parametrize("extra,fragment", [
    ({"_attn_implementation_internal": "attacker/remote-kernel"}, "_attn_implementation_internal"),
    ({"_experts_implementation_internal": "attacker/experts"}, "_experts_implementation_internal"),
    ({"_attn_implementation": "attacker/kernel"}, "_attn_implementation"),
    # Nested in a sub-config: transformers builds text_config / vision_config as configs too.
    ({"text_config": {"hidden_size": 64, "_attn_implementation_internal": "attacker/k"}},
     "text_config._attn_implementation_internal"),
    ({"vision_config": {"layers": [{"_attn_implementation_internal": "attacker/k"}]}},
     "vision_config.layers[0]._attn_implementation_internal"),
])
def test_a_kernel_from_another_repo_fails_with_cve_2026_4372(root, extra, fragment):
    model(root, extra)
    run, sec = security_check(root)
    assert sec["status"] == "fail"
    assert fragment in sec["detail"] and "CVE-2026-4372" in sec["detail"] and "transformers < 5.3.0" in sec["detail"]
    assert run.exit_code == 5
    assert_error_line(run_vmm("check", "evil--model", "--fast"), 5, "security", "config.json", "CVE-2026-4372")


def test_other_private_attributes_fail_but_transformers_own_bookkeeping_passes(root):
    model(root, {"_auto_class": "x", "_name_or_path": "/home/me/ckpt", "_attn_implementation_autoset": True})
    run, sec = security_check(root)
    assert sec["status"] == "fail" and run.exit_code == 5
    assert "_auto_class" in sec["detail"]
    assert "_name_or_path" not in sec["detail"] and "_attn_implementation_autoset" not in sec["detail"]


@pytest.mark.parametrize("name", ["../../../../tmp/owned", "/etc/cron.d/x", "sub/dir", "..\\evil", "C:evil", ""])
def test_chat_template_names_that_are_paths_fail_with_cve_2026_9856(root, name):
    tok = {**TOK, "chat_template": [{"name": "default", "template": "{{ messages }}"},
                                    {"name": name, "template": "{{ 1 }}"}]}
    model(root, tok=tok)
    run, sec = security_check(root)
    assert sec["status"] == "fail" and run.exit_code == 5
    assert "tokenizer_config.json" in sec["detail"] and "CVE-2026-9856" in sec["detail"]
    assert "transformers < 5.10.0" in sec["detail"]


def test_named_chat_templates_with_plain_names_pass(root):
    tok = {**TOK, "chat_template": [{"name": "default", "template": "{{ messages }}"},
                                    {"name": "tool_use", "template": "{{ tools }}"}, {"name": "rag", "template": "x"}]}
    model(root, tok=tok)
    assert security.scan(root / "evil--model") == []


@pytest.mark.parametrize("auto_map,fragment", [
    ({"AutoModelForCausalLM": "attacker/payload--modeling_evil.EvilForCausalLM"}, "another repo (attacker/payload)"),
    ({"AutoConfig": "/tmp/evil.Config"}, "points outside the repo"),
    ({"AutoModel": "../../outside.Model"}, "points outside the repo"),
    ({"AutoModel": "sub/dir/modeling.Model"}, "points outside the repo"),
])
def test_auto_map_outside_the_repo_fails(root, auto_map, fragment):
    model(root, {"auto_map": auto_map})
    run, sec = security_check(root)
    assert sec["status"] == "fail" and run.exit_code == 5, sec
    assert fragment in sec["detail"] and "config.json" in sec["detail"]


def test_auto_map_in_the_tokenizer_config_is_read_too(root):
    tok = {**TOK, "auto_map": {"AutoTokenizer": [None, "attacker/tok--tokenization_evil.EvilTokenizerFast"]}}
    model(root, tok=tok)
    [finding] = security.scan(root / "evil--model")
    assert finding.file == "tokenizer_config.json" and "attacker/tok" in finding.what


def test_auto_map_into_the_repo_itself_is_not_a_security_finding(root):
    """Remote code of the repo itself: `vllm` warns (needs --trust-remote-code), security passes."""
    model(root, {"auto_map": {"AutoConfig": "configuration_x.XConfig",
                              "AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    _run, sec = security_check(root)
    assert sec["status"] == "pass"


def test_many_findings_are_counted_not_all_listed(root):
    model(root, {f"_private_{i}": i for i in range(8)})
    _run, sec = security_check(root)
    assert sec["detail"].count("_private_") == security.MAX_REPORTED and "(+3 more)" in sec["detail"]


def test_published_configs_pass(tmp_path):
    """The real config.json / tokenizer_config.json files in tests/data raise nothing."""
    configs = sorted((REPO / "tests" / "data" / "real_configs").rglob("*.json"))
    assert configs
    for path in configs:
        doc = json.loads(path.read_text())
        assert security.private_attributes(doc, path.name) == [], path
        assert security.auto_map_targets(doc, path.name) == [], path
        assert security.template_names(doc, path.name) == [], path


def test_a_malformed_config_is_left_to_the_config_check(root):
    path = model(root)
    (path / "config.json").write_text("{not json")
    assert security.scan(path) == []
