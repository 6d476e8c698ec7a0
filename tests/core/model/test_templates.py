"""vmm template: resolution order, families, rendering in the sandbox, folding, --set."""

from __future__ import annotations

import json

import pytest
from builders import (
    LLAMA3_8B_INSTRUCT,
    MISTRAL_7B_V02,
    QWEN2_7B_INSTRUCT,
    QWEN2_TOKENIZER_CONFIG,
    TINY_LLAMA,
    YI_6B,
    config,
    make_gguf_model,
    make_model,
    make_safetensors_model,
)
from conftest import assert_error_line, run_vmm

from vmm.core.model import template_render, templates
from vmm.core.store import locking, manifests

CARD = "You are Zed the lighthouse keeper; you speak only in riddles and remember every ship."
TURNS = [c for _, c in template_render.SAMPLE_TURNS]

# Mistral-7B-Instruct-v0.2's own tokenizer_config.json chat_template (public repo).
MISTRAL_REAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)



def small(base, **over):
    """A real config shrunk to tiny weights (families are chosen from model_type/architectures)."""
    return config(TINY_LLAMA, model_type=base["model_type"], architectures=base["architectures"], **over)


def assert_in_order(text, parts):
    pos = 0
    for part in parts:
        found = text.find(part, pos)
        assert found >= 0, (part, text)
        pos = found + len(part)


# --------------------------------------------------------------------------- families


@pytest.mark.parametrize("repo_id, cfg, family", [
    ("Qwen/Qwen2-7B-Instruct", QWEN2_7B_INSTRUCT, "chatml"),
    ("01-ai/Yi-6B-Chat", YI_6B, "chatml"),
    ("mistralai/Mistral-7B-Instruct-v0.2", MISTRAL_7B_V02, "mistral"),
    ("microsoft/DialoGPT-medium", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "dialogpt"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", LLAMA3_8B_INSTRUCT, "generic"),
])
def test_family_is_chosen_from_type_architecture_and_name(repo_id, cfg, family):
    assert templates.choose_family(cfg["model_type"], cfg["architectures"], repo_id) == family


def test_yi_is_recognised_by_name_only_as_a_word():
    assert templates.choose_family("llama", ["LlamaForCausalLM"], "01-ai/Yi-34B") == "chatml"
    assert templates.choose_family("llama", ["LlamaForCausalLM"], "someone/yield-7b") == "generic"


def test_chatml_family_keeps_system_turn_and_every_turn(root):
    make_model(root, "Qwen/Qwen2-0.5B", cfg=small(QWEN2_7B_INSTRUCT))
    run = run_vmm("template", "Qwen/Qwen2-0.5B", "--system", CARD, "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert (doc["source"], doc["family"]) == ("family", "chatml")
    assert doc["rendered"].startswith(f"<|im_start|>system\n{CARD}<|im_end|>\n<|im_start|>user\n")
    assert_in_order(doc["rendered"], [CARD, *TURNS])
    assert doc["rendered"].endswith("<|im_start|>assistant\n")
    assert doc["system_folded"] is False


def test_mistral_family_refuses_system_so_it_is_folded_into_first_user_turn(root):
    make_model(root, "mistralai/Mistral-7B-Instruct-v0.2", cfg=small(MISTRAL_7B_V02))
    run = run_vmm("template", "mistralai/Mistral-7B-Instruct-v0.2", "--system", CARD, "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["family"] == "mistral" and doc["system_folded"] is True
    assert "alternate" in doc["fold_reason"]
    assert doc["rendered"].startswith(f"<s>[INST] {CARD}\n\n{TURNS[0]} [/INST]{TURNS[1]}</s>[INST] {TURNS[2]} [/INST]")
    assert "folded" in run.stderr


def test_mistral_family_template_raises_like_the_real_one():
    with pytest.raises(templates.TemplateProblem, match="alternate"):
        template_render.render_messages(template_render.compile_template(templates.family_template("mistral")),
                                  [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                  {"bos_token": "<s>", "eos_token": "</s>"})
    real = templates.render_sample(MISTRAL_REAL, {"bos_token": "<s>", "eos_token": "</s>"}, CARD)
    mine = templates.render_sample(templates.family_template("mistral"), {"bos_token": "<s>", "eos_token": "</s>"}, CARD)
    assert mine.rendered == real.rendered


def test_dialogpt_family_joins_turns_with_eos(root):
    make_model(root, "microsoft/DialoGPT-small", cfg=config(TINY_LLAMA, model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    doc = run_vmm("template", "microsoft/DialoGPT-small", "--system", CARD, "--json").json()
    assert doc["family"] == "dialogpt"
    assert doc["rendered"] == "<|endoftext|>".join([CARD, *TURNS]) + "<|endoftext|>"


def test_generic_family_uses_human_assistant_markers(root):
    make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    doc = run_vmm("template", "acme/base-7b", "--system", CARD, "--json").json()
    assert doc["family"] == "generic"
    assert doc["rendered"] == (f"{CARD}\n\n### Human: {TURNS[0]}\n\n### Assistant: {TURNS[1]}\n\n"
                               f"### Human: {TURNS[2]}\n\n### Assistant:")


def test_default_sample_has_a_character_card(root):
    make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    doc = run_vmm("template", "acme/base-7b", "--json").json()
    assert template_render.DEFAULT_SYSTEM in doc["rendered"]
    assert set(doc) >= {"schema_version", "source", "family", "template", "rendered"}


# --------------------------------------------------------------------------- sources


def test_tokenizer_config_template_is_used_with_its_tokens(root):
    make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=small(QWEN2_7B_INSTRUCT), tokenizer_config=QWEN2_TOKENIZER_CONFIG)
    doc = run_vmm("template", "Qwen/Qwen2-7B-Instruct", "--json").json()
    assert doc["source"] == "tokenizer_config.json"
    assert doc["template"] == QWEN2_TOKENIZER_CONFIG["chat_template"]
    assert doc["eos_token"] == "<|im_end|>"


def test_chat_template_jinja_wins_over_tokenizer_config(root):
    jinja = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}\n{% endfor %}"
    make_model(root, "acme/both", cfg=TINY_LLAMA, tokenizer_config=QWEN2_TOKENIZER_CONFIG,
               extra_files={"chat_template.jinja": jinja})
    doc = run_vmm("template", "acme/both", "--json").json()
    assert doc["source"] == "chat_template.jinja" and doc["template"] == jinja
    assert doc["rendered"].startswith(f"<<system>>{template_render.DEFAULT_SYSTEM}\n<<user>>")


def test_list_of_named_templates_uses_default_and_names_the_others(root):
    tok = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": [
        {"name": "default", "template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"},
        {"name": "tool_use", "template": "{{ 'tools' }}"},
        {"name": "rag", "template": "{{ 'rag' }}"},
    ]}
    make_model(root, "acme/named", cfg=TINY_LLAMA, tokenizer_config=tok)
    doc = run_vmm("template", "acme/named", "--json").json()
    assert doc["source"] == "tokenizer_config.json"
    assert doc["rendered"].startswith("[system] ")
    assert doc["named_templates"] == ["default", "rag", "tool_use"]


def test_named_templates_without_default_exit_5(root):
    tok = {"chat_template": [{"name": "tool_use", "template": "x"}]}
    make_model(root, "acme/nodefault", cfg=TINY_LLAMA, tokenizer_config=tok)
    assert_error_line(run_vmm("template", "acme/nodefault"), 5, "default", "tool_use")


def test_added_token_dicts_give_bos_and_eos(root):
    tok = {"bos_token": {"__type": "AddedToken", "content": "<|begin|>", "lstrip": False},
           "eos_token": {"__type": "AddedToken", "content": "<|end|>", "rstrip": False},
           "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}
    make_model(root, "acme/added", cfg=TINY_LLAMA, tokenizer_config=tok)
    doc = run_vmm("template", "acme/added", "--json").json()
    assert (doc["bos_token"], doc["eos_token"]) == ("<|begin|>", "<|end|>")
    assert doc["rendered"].startswith("<|begin|>" + template_render.DEFAULT_SYSTEM + "<|end|>")


def test_gguf_metadata_template_and_tokens(root):
    gguf_template = "{% for m in messages %}{{ bos_token }}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
    make_gguf_model(root / "acme--tiny-GGUF", chat_template=gguf_template, vocab=8, bos_id=1, eos_id=2)
    doc = run_vmm("template", "acme/tiny-GGUF", "--json").json()
    assert doc["source"] == "gguf"
    assert doc["template"] == gguf_template
    assert (doc["bos_token"], doc["eos_token"]) == ("<t1>", "<t2>")
    assert doc["rendered"].startswith(f"<t1>system: {template_render.DEFAULT_SYSTEM}<t2>")


def test_gguf_without_template_falls_back_to_family(root):
    make_gguf_model(root / "Qwen--Qwen2-0.5B-GGUF", arch="qwen2", vocab=8)
    doc = run_vmm("template", "Qwen/Qwen2-0.5B-GGUF", "--json").json()
    assert (doc["source"], doc["family"]) == ("family", "chatml")


# --------------------------------------------------------------------------- bad templates


def test_syntax_error_exits_5_naming_source_and_line(root):
    bad = "{% for m in messages %}\n{{ m.content }\n{% endfor %}"
    make_model(root, "acme/bad", cfg=TINY_LLAMA, extra_files={"chat_template.jinja": bad})
    run = run_vmm("template", "acme/bad")
    assert_error_line(run, 5, "syntax error", "line 2", "chat_template.jinja")


def test_template_raising_on_plain_conversation_exits_5_with_line(root):
    bad = "{% for m in messages %}\n{% if m.role == 'assistant' %}\n{{ raise_exception('assistant turns unsupported') }}\n{% endif %}{% endfor %}"
    make_model(root, "acme/raises", cfg=TINY_LLAMA, tokenizer_config={"chat_template": bad})
    run = run_vmm("template", "acme/raises")
    assert_error_line(run, 5, "assistant turns unsupported", "line 3", "tokenizer_config.json")


def test_template_that_drops_system_text_gets_it_folded(root):
    drops = "{% for m in messages if m.role != 'system' %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    make_model(root, "acme/drops", cfg=TINY_LLAMA, tokenizer_config={"chat_template": drops})
    doc = run_vmm("template", "acme/drops", "--system", CARD, "--json").json()
    assert doc["system_folded"] is True and CARD in doc["rendered"]
    assert "dropped" in doc["fold_reason"]


def test_sandbox_refuses_attribute_escapes(root):
    evil = "{{ messages.__class__.__mro__ }}"
    make_model(root, "acme/evil", cfg=TINY_LLAMA, extra_files={"chat_template.jinja": evil})
    assert_error_line(run_vmm("template", "acme/evil"), 5, "chat_template.jinja")


def test_transformers_globals_are_available():
    text = ("{{ messages | tojson }}{% set ns = namespace(n=0) %}{% for m in messages %}"
            "{% set ns.n = ns.n + 1 %}{% if loop.index > 10 %}{% break %}{% endif %}{% endfor %}"
            "{{ ns.n }}{{ strftime_now('%Y') | length }}{% generation %}x{% endgeneration %}")
    out = templates.render_sample(text, {}).rendered
    assert json.loads(out[: out.index("]") + 1])[0]["role"] == "system"
    assert out.endswith("44x")


# --------------------------------------------------------------------------- --set / setup


def test_set_family_writes_chat_template_and_records_it(root):
    path = make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    run = run_vmm("template", "acme/base-7b", "--set", "chatml", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["source"] == "chat_template.jinja"
    assert (path / "chat_template.jinja").read_text() == templates.family_template("chatml")
    record = manifests.read_manifest(path).extra["chat_template"]
    assert record["written_by"] == "vmm" and record["family"] == "chatml"


def test_set_file_keeps_the_original_chat_template(root, tmp_path):
    original = "{% for m in messages %}ORIG {{ m.content }}{% endfor %}"
    path = make_model(root, "acme/orig", cfg=TINY_LLAMA, extra_files={"chat_template.jinja": original})
    mine = tmp_path / "mine.jinja"
    mine.write_text("{% for m in messages %}MINE {{ m.content }}\n{% endfor %}")
    run = run_vmm("template", "acme/orig", "--set", str(mine), "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["rendered"].startswith("MINE ")
    assert (path / ".vmm" / "chat_template.jinja.orig").read_text() == original
    record = manifests.read_manifest(path).extra["chat_template"]
    assert record["original"] == ".vmm/chat_template.jinja.orig"
    # A second --set replaces vmm's file and still keeps the first original.
    assert run_vmm("template", "acme/orig", "--set", "generic").exit_code == 0
    assert (path / ".vmm" / "chat_template.jinja.orig").read_text() == original
    assert manifests.read_manifest(path).extra["chat_template"]["original"] == ".vmm/chat_template.jinja.orig"


def test_template_restored_by_a_pull_is_not_taken_for_vmms(root):
    original = "{% for m in messages %}HUB {{ m.content }}{% endfor %}"
    path = make_model(root, "acme/orig", cfg=TINY_LLAMA, extra_files={"chat_template.jinja": original})
    assert run_vmm("template", "acme/orig", "--set", "chatml").exit_code == 0
    (path / "chat_template.jinja").write_text(original)          # what a repairing pull does
    doc = run_vmm("template", "acme/orig", "--json").json()
    assert doc["written_by_vmm"] is False and doc["rendered"].startswith("HUB ")
    (path / ".vmm" / "chat_template.jinja.orig").unlink()
    assert run_vmm("template", "acme/orig", "--set", "generic").exit_code == 0
    assert (path / ".vmm" / "chat_template.jinja.orig").read_text() == original


def test_set_on_hand_made_dir_records_beside_it_without_making_it_managed(root):
    path = make_safetensors_model(root / "my-finetune", TINY_LLAMA)
    assert run_vmm("template", "my-finetune", "--set", "mistral").exit_code == 0
    assert manifests.read_manifest(path) is None
    assert json.loads((path / ".vmm" / "chat_template.json").read_text())["family"] == "mistral"
    doc = run_vmm("template", "my-finetune", "--json").json()
    assert doc["family"] == "mistral" and doc["written_by_vmm"] is True


def test_set_bad_template_file_exits_5_and_writes_nothing(root, tmp_path):
    path = make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    assert_error_line(run_vmm("template", "acme/base-7b", "--set", str(bad)), 5, "bad.jinja", "line 1")
    assert not (path / "chat_template.jinja").exists()


def test_set_unknown_family_exits_2(root):
    make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    assert_error_line(run_vmm("template", "acme/base-7b", "--set", "nosuchfamily"), 2, "chatml")


def test_setup_chat_template_writes_family_only_without_own_template(root):
    bare = make_model(root, "mistralai/Mistral-7B-v0.1", cfg=small(MISTRAL_7B_V02))
    result = templates.setup_chat_template(bare, "mistralai/Mistral-7B-v0.1")
    assert (result.action, result.family) == ("written", "mistral")
    assert (bare / "chat_template.jinja").read_text() == templates.family_template("mistral")
    assert oct((bare / "chat_template.jinja").stat().st_mode & 0o044) == oct(0o044)
    assert manifests.read_manifest(bare).extra["chat_template"]["written_by"] == "vmm"
    own = make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=small(QWEN2_7B_INSTRUCT), tokenizer_config=QWEN2_TOKENIZER_CONFIG)
    kept = templates.setup_chat_template(own, "Qwen/Qwen2-7B-Instruct")
    assert (kept.action, kept.source) == ("kept", "tokenizer_config.json")
    assert not (own / "chat_template.jinja").exists()


def test_template_of_unknown_model_exits_3(root):
    assert_error_line(run_vmm("template", "nobody/nothing"), 3)


def test_set_refuses_while_another_vmm_holds_the_model(root):
    make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    with locking.model_lock(root, "acme--base-7b", "pull"):
        assert_error_line(run_vmm("template", "acme/base-7b", "--set", "chatml"), 8, "locked")
    assert not (root / "acme--base-7b" / "chat_template.jinja").exists()


# --------------------------------------------------------------------------- hostile templates (bounded rendering)

LOOP_BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"   # 10**10 steps
SIZE_BOMB = "{{ 'x' * 10**12 }}"
OUTPUT_BOMB = "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}"                      # 100 MB, in pieces
RECURSION_BOMB = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
PARSE_BOMB = "{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}"


@pytest.mark.parametrize("bomb, says", [
    (LOOP_BOMB, "took longer than"), (SIZE_BOMB, "memory"), (OUTPUT_BOMB, "more than"),
    (RECURSION_BOMB, "recurses too deeply"), (PARSE_BOMB, "nests or recurses"),
])
def test_hostile_template_is_exit_5_naming_the_file_never_a_hang(root, bomb, says):
    make_model(root, "acme/bomb", cfg=TINY_LLAMA, extra_files={"chat_template.jinja": bomb})
    run = run_vmm("template", "acme/bomb")
    assert_error_line(run, 5, "exceeds a rendering limit", says, "chat_template.jinja")
    assert "MemoryError" not in run.stderr and "RecursionError" not in run.stderr


def test_hostile_template_is_a_check_warning_naming_the_file(root):
    make_model(root, "acme/bomb", cfg=TINY_LLAMA, tokenizer_config={"chat_template": SIZE_BOMB})
    run = run_vmm("check", "acme/bomb", "--json")
    [template] = [c for c in run.json()["checks"] if c["name"] == "template"]
    assert template["status"] == "warn", template
    assert "exceeds a rendering limit" in template["detail"] and "tokenizer_config.json" in template["detail"]


def test_set_refuses_a_hostile_template_and_writes_nothing(root, tmp_path):
    path = make_model(root, "acme/base-7b", cfg=TINY_LLAMA)
    bomb = tmp_path / "bomb.jinja"
    bomb.write_text(LOOP_BOMB)
    assert_error_line(run_vmm("template", "acme/base-7b", "--set", str(bomb)), 5, "bomb.jinja", "rendering limit")
    assert not (path / "chat_template.jinja").exists()


def test_oversized_template_text_is_refused_before_rendering():
    with pytest.raises(templates.TemplateProblem, match="characters is over") as caught:
        templates.render_sample("x" * (template_render.MAX_TEMPLATE_CHARS + 1), {})
    assert caught.value.kind == "limit"


def test_bounded_and_in_process_rendering_agree():
    text = templates.family_template("chatml")
    tokens = {"eos_token": "<|im_end|>"}
    assert templates.render_sample(text, tokens, CARD) == template_render.render_sample_here(text, tokens, CARD)
    with pytest.raises(templates.TemplateProblem, match="alternate") as caught:
        templates.render_sample("{{ raise_exception('roles must alternate') }}", {})
    assert caught.value.kind == "raise"
