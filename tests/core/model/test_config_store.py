"""Config extraction (nested, MLA, limits) and the models root's creation rules."""

from __future__ import annotations

import json

import pytest

import builders as b
from conftest import assert_error_line, run_vmm
from vmm.core.store import local
from vmm.core.model.config import get_model_config, kv_cache_bytes_per_token, read_model_config
from vmm.core.errors import UsageError


def test_nested_text_config_of_a_multimodal_model_wins(tmp_path):
    doc = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": {"hidden_size": 2560, "num_hidden_layers": 34, "num_attention_heads": 8,
                           "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 1024,
                           "max_position_embeddings": 131072, "vocab_size": 262208},
           "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    cfg = read_model_config(tmp_path)
    assert cfg.architectures == ["Gemma3ForConditionalGeneration"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.sliding_window) == (2560, 34, 256, 1024)
    assert kv_cache_bytes_per_token(cfg) == 2 * 34 * 4 * 256 * 2


def test_spec_config_function_returns_the_six_fields(tmp_path):
    b.make_safetensors_model(tmp_path, b.YI_6B, tokenizer_config={"model_max_length": 4096})
    doc = get_model_config(tmp_path)
    assert {k: doc[k] for k in ("max_position_embeddings", "model_max_length", "vocab_size",
                                "hidden_size", "model_type", "architectures")} == {
        "max_position_embeddings": 4096, "model_max_length": 4096, "vocab_size": 64000,
        "hidden_size": 4096, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def test_unlimited_tokenizer_length_is_not_a_limit(tmp_path):
    b.make_safetensors_model(tmp_path, b.MISTRAL_7B_V02, tokenizer_config={"model_max_length": 1e30})
    assert read_model_config(tmp_path).model_max_length is None


def test_root_that_cannot_be_created_is_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError) as info:
        local.ensure_root(blocker / "models")
    assert info.value.exit_code == 2 and "VMM_ROOT" in info.value.line()


def test_ls_of_a_root_that_is_a_file_is_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_error_line(run_vmm("ls", "--root", blocker), 2, "cannot read models root")
