"""vLLM 0.34's ``hf`` tool / reasoning parser, chosen when the tokenizer configuration carries a
``response_template`` (vllm/parser/response_template.py) and the target vLLM registers it."""

from __future__ import annotations

import builders as b
from vmm.core.serving import parsers

QWEN3 = b.config(b.TINY_LLAMA, model_type="qwen3", architectures=["Qwen3ForCausalLM"])
# test-built: only the field names matter to the choice
TEMPLATE = {"version": 1, "fields": {"thinking": {"open": "<think>", "close": "</think>"},
                                     "content": {}, "tool_calls": {"open": "<tool_call>"}}}


def test_the_fields_are_read_from_the_tokenizer_configuration():
    assert parsers.response_template_fields({"response_template": TEMPLATE}) == {"thinking", "content", "tool_calls"}
    assert parsers.response_template_fields({"response_template": {"fields": []}}) == set()
    assert parsers.response_template_fields({}) == set() == parsers.response_template_fields(None)


def test_hf_wins_where_the_target_vllm_registers_it(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", cfg=QWEN3,
                                 tokenizer_config={"response_template": TEMPLATE, "chat_template": "{{ tools }}"})
    new = parsers.choose_for_model(d, "org/m", "qwen3", ["Qwen3ForCausalLM"], vllm_version="0.34.0")
    assert (new.tool_call_parser, new.reasoning_parser) == ("hf", "hf")
    assert "response_template" in new.tool_why and "thinking" in new.reasoning_why
    old = parsers.choose_for_model(d, "org/m", "qwen3", ["Qwen3ForCausalLM"], vllm_version="0.28.0")
    assert "hf" not in (old.tool_call_parser, old.reasoning_parser)      # 0.28 registers no hf parser


def test_only_the_declared_fields_get_hf_and_overrides_still_win(tmp_path):
    content_only = {"fields": {"content": {}, "thinking": {"open": "<think>"}}}
    d = b.make_safetensors_model(tmp_path / "m", cfg=QWEN3, tokenizer_config={"response_template": content_only})
    choice = parsers.choose_for_model(d, "org/m", "qwen3", ["Qwen3ForCausalLM"], vllm_version="0.34.0")
    assert choice.reasoning_parser == "hf" and choice.tool_call_parser != "hf"
    forced = parsers.choose_for_model(d, "org/m", "qwen3", ["Qwen3ForCausalLM"], vllm_version="0.34.0",
                                      reasoning_parser="none")
    assert forced.reasoning_parser is None
