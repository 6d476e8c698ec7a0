"""Tool-call and reasoning parsers: the choice, the registries, the serve flags, the refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import builders as b
from conftest import REPO, assert_error_line, run_vmm

from vmm.core.errors import UsageError
from vmm.core.serving import parsers

TEMPLATES = REPO / "tests" / "data" / "real_templates"


def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


@pytest.fixture
def v032():
    return parsers.snapshot_registry("0.32.0")


# --------------------------------------------------------------------------- the choice, on real templates

@pytest.mark.parametrize("model_type, name, file, tool, reasoning", [
    ("qwen3", "Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.jinja", "hermes", "qwen3"),
    ("qwen2", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai--DeepSeek-R1-Distill-Qwen-32B.jinja",
     None, "deepseek_r1"),
    ("llama", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama--Llama-3.2-3B-Instruct.jinja", "llama3_json", None),
    ("llama", "meta-llama/Llama-3.3-70B-Instruct", "meta-llama--Llama-3.3-70B-Instruct.jinja", "llama3_json", None),
    ("gpt_oss", "openai/gpt-oss-120b", "openai--gpt-oss-120b.jinja", "openai", "openai_gptoss"),
    ("mistral", "mistralai/Mistral-Nemo-Instruct-2407", "mistralai--Mistral-Nemo-Instruct-2407.jinja",
     "mistral", None),
    ("mistral3", "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
     "mistralai--Mistral-Small-3.1-24B-Instruct-2503.jinja", "mistral", None),
    ("gemma2", "google/gemma-2-2b-it", "google--gemma-2-2b-it.jinja", None, None),
    ("phi3", "microsoft/Phi-3.5-mini-instruct", "microsoft--Phi-3.5-mini-instruct.jinja", None, None),
])
def test_real_templates_get_the_parsers_vllms_docs_name(v032, model_type, name, file, tool, reasoning):
    choice = parsers.choose(model_type, None, name, template(file), v032)
    assert (choice.tool_call_parser, choice.reasoning_parser) == (tool, reasoning), choice
    assert choice.tool_why and choice.reasoning_why
    flags = choice.argv()
    assert ("--enable-auto-tool-choice" in flags) == (tool is not None)


def test_a_template_without_tools_means_no_tool_parser_even_for_a_tool_family(v032):
    # Meta-Llama-3-8B-Instruct (3.0) shares model_type llama with 3.1 but its template has no tools.
    choice = parsers.choose("llama", ["LlamaForCausalLM"], "meta-llama/Meta-Llama-3-8B-Instruct",
                            b.QWEN_CHAT_TEMPLATE, v032)
    assert choice.tool_call_parser is None and "does not use `tools`" in choice.tool_why
    assert choice.argv() == []


def test_the_templates_format_wins_over_the_architecture(v032):
    # A Llama-architecture model with Qwen3's Hermes-style template writes <tool_call> blocks.
    choice = parsers.choose("llama", ["LlamaForCausalLM"], "acme/tiny", template("Qwen--Qwen3-0.6B.jinja"), v032)
    assert choice.tool_call_parser == "hermes" and "<tool_call>" in choice.tool_why


def test_template_uses_tools_looks_inside_jinja_only():
    assert parsers.template_uses_tools(template("meta-llama--Llama-3.2-3B-Instruct.jinja"))
    assert not parsers.template_uses_tools("{{ messages[0]['content'] }} tools are great")
    assert not parsers.template_uses_tools(None)


def test_a_name_the_target_vllm_does_not_register_is_never_passed():
    old = parsers.snapshot_registry("0.10.0")           # before gpt-oss landed
    choice = parsers.choose("gpt_oss", None, "openai/gpt-oss-20b", template("openai--gpt-oss-120b.jinja"), old)
    assert choice.tool_call_parser is None and "0.10.0" in choice.tool_why and "openai" in choice.tool_why
    assert choice.reasoning_parser is None
    # GLM-4.5's parsers were called glm4_moe in 0.10.0 and glm45 since: the registered one wins.
    assert parsers.choose("glm4_moe", None, "zai-org/GLM-4.5", None, old).tool_call_parser == "glm4_moe"
    new = parsers.snapshot_registry("0.32.0")
    assert parsers.choose("glm4_moe", None, "zai-org/GLM-4.5", None, new).tool_call_parser == "glm45"


def test_overrides_take_a_registered_name_or_none(v032):
    qwen3 = template("Qwen--Qwen3-0.6B.jinja")
    choice = parsers.choose("qwen3", None, "Qwen/Qwen3-8B", qwen3, v032, tool_parser="qwen3_xml",
                            reasoning_parser="none")
    assert (choice.tool_call_parser, choice.reasoning_parser) == ("qwen3_xml", None)
    assert choice.argv() == ["--enable-auto-tool-choice", "--tool-call-parser", "qwen3_xml"]
    with pytest.raises(UsageError) as err:
        parsers.choose("qwen3", None, "Qwen/Qwen3-8B", qwen3, v032, tool_parser="hermes2")
    assert err.value.exit_code == 2 and "hermes2" in err.value.which and "llama3_json" in err.value.which


# --------------------------------------------------------------------------- the snapshot

def test_every_rule_names_parsers_some_vllm_registers():
    """A typo in RULES (a name no vLLM version registers) fails here."""
    doc = json.loads((REPO / "vmm" / "data" / "vllm_parsers.json").read_text())
    tools = {n for e in doc["versions"].values() for n in e["tool_parsers"]}
    reasoning = {n for e in doc["versions"].values() for n in e["reasoning_parsers"]}
    for rule in parsers.RULES:
        assert set(rule.tools) <= tools, rule
        assert set(rule.reasoning) <= reasoning, rule
        assert bool(rule.tools) == bool(rule.source) and bool(rule.reasoning) == bool(rule.reasoning_source), rule
    for _, name, _ in parsers.TEMPLATE_FORMATS:
        assert name in tools
    for version, entry in doc["versions"].items():
        assert entry["obtained"] and entry["tool_parsers"] == sorted(entry["tool_parsers"]), version
    assert "installed vllm 0.32.0" in doc["versions"]["0.32.0"]["obtained"]


def test_snapshot_picks_the_nearest_older_version():
    reg = parsers.snapshot_registry("0.30.1")
    assert reg.source == "snapshot of vllm 0.28.0" and reg.notes
    assert parsers.snapshot_registry(None).source == "snapshot of vllm 0.34.0"


# --------------------------------------------------------------------------- serve and check

QWEN3 = b.config(b.TINY_LLAMA, model_type="qwen3", architectures=["Qwen3ForCausalLM"])


def qwen3_model(root: Path, name: str = "Qwen/Qwen3-8B") -> Path:
    tok = {"chat_template": template("Qwen--Qwen3-0.6B.jinja"), "eos_token": "<|im_end|>"}
    return b.make_model(root, name, cfg=QWEN3, tokenizer_config=tok)


def dry(*args):
    return run_vmm("serve", *args, "--dry-run", "--json", "--gpus", "1", "--gpu-memory", "24GiB")


def test_serve_passes_the_parsers_and_says_why(root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))           # no vllm: the bundled snapshot judges
    qwen3_model(root)
    run = dry("Qwen/Qwen3-8B")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    cmd = doc["command"]
    assert cmd[cmd.index("--tool-call-parser") - 1:cmd.index("--tool-call-parser") + 2] == \
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert cmd[cmd.index("--reasoning-parser") + 1] == "qwen3"
    assert doc["tool_call_parser"] == "hermes" and doc["reasoning_parser"] == "qwen3"
    assert "tool_calling.md" in doc["parsers"]["tool_call_parser_why"]
    assert doc["parsers"]["registry"] == "snapshot of vllm 0.34.0"
    human = run_vmm("serve", "Qwen/Qwen3-8B", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB")
    assert "tool calls" in human.stdout and "hermes" in human.stdout and "reasoning" in human.stdout


def test_serve_overrides_and_unknown_names(root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    qwen3_model(root)
    doc = dry("Qwen/Qwen3-8B", "--tool-parser", "none", "--reasoning-parser", "none").json()
    assert "--enable-auto-tool-choice" not in doc["command"] and "--reasoning-parser" not in doc["command"]
    assert doc["tool_call_parser"] is None
    doc = dry("Qwen/Qwen3-8B", "--tool-parser", "qwen3_xml").json()
    assert "qwen3_xml" in doc["command"]
    run = dry("Qwen/Qwen3-8B", "--tool-parser", "nosuch")
    assert_error_line(run, 2, "--tool-parser", "nosuch", "hermes", "llama3_json")
    run = dry("Qwen/Qwen3-8B", "--reasoning-parser", "nosuch")
    assert_error_line(run, 2, "--reasoning-parser", "nosuch", "deepseek_r1")


def test_check_reports_tool_calls(root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    qwen3_model(root)
    doc = run_vmm("check", "Qwen/Qwen3-8B", "--json").json()
    [tools] = [c for c in doc["checks"] if c["name"] == "tool calls"]
    assert tools["status"] == "pass" and "hermes" in tools["detail"] and "qwen3" in tools["detail"]
    doc = run_vmm("check", "Qwen/Qwen3-8B", "--json", "--vllm-version", "0.10.0").json()
    [tools] = [c for c in doc["checks"] if c["name"] == "tool calls"]
    assert tools["status"] == "pass" and "0.10.0" in tools["detail"]


STABLELM = b.config(b.TINY_LLAMA, architectures=["StableLMEpochForCausalLM"], model_type="stablelm_epoch")


def test_serve_refuses_what_the_target_vllm_cannot_serve_unless_forced(root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    b.make_model(root, "stabilityai/stablelm-3b-4e1t", cfg=STABLELM)
    check = run_vmm("check", "stabilityai/stablelm-3b-4e1t", "--json")
    [finding] = [c for c in check.json()["checks"] if c["name"] == "vllm"]
    run = dry("stabilityai/stablelm-3b-4e1t")
    assert_error_line(run, 6, "StableLMEpochForCausalLM", "0.34.0", "--force")
    # The same finding text as `vmm check`'s vLLM compatibility check.
    reason = finding["detail"].split(" (")[0]
    assert reason in run.stderr, (reason, run.stderr)
    forced = dry("stabilityai/stablelm-3b-4e1t", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "warning: --force" in forced.stderr and "--model-impl transformers" in forced.stderr
    assert any("--force" in w for w in forced.json()["warnings"])


# --------------------------------------------------------------------------- with the fake vllm on PATH

FAKE_BIN = REPO / "tests" / "fakevllm"


def _run_serve(root: Path, tmp_path: Path, name: str, *extra: str):
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", "VMM_ROOT": str(root),
           "FAKE_VLLM_RECORD": str(tmp_path / "argv.json")}
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "serve", name, "--gpus", "1", "--gpu-memory", "24GiB",
                             "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        if not url:
            return proc.wait(timeout=60), None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        return code, json.loads((tmp_path / "argv.json").read_text())["argv"], proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_parser_flags_reach_vllm_and_a_refused_model_never_starts(root, tmp_path):
    qwen3_model(root)
    code, argv, stderr = _run_serve(root, tmp_path, "Qwen/Qwen3-8B")
    assert code == 0, stderr
    at = argv.index("--tool-call-parser")
    assert argv[at - 1:at + 2] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert argv[argv.index("--reasoning-parser") + 1] == "qwen3"
    b.make_model(root, "stabilityai/stablelm-3b-4e1t", cfg=STABLELM)
    (tmp_path / "argv.json").unlink()
    code, argv, stderr = _run_serve(root, tmp_path, "stabilityai/stablelm-3b-4e1t")
    assert code == 6 and argv is None and "StableLMEpochForCausalLM" in stderr, stderr
    assert not (tmp_path / "argv.json").exists()           # vLLM was never started
