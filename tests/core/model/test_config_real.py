"""vmm's effective config, layer kinds and planner on every real published config.json.

tests/data/real_configs holds verbatim copies (sources in tests/data/SOURCES.md). The values
asserted here are quoted from those files (or from the transformers class default the file
relies on, named where it is used); the e2e oracle (tests/e2e/test_vllm_oracle.py) checks the
same derivations against vLLM's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.core.model import config as config_mod, layers
from vmm.core.serving import planner
from vmm.core.serving.request import plan_only

REAL = Path(__file__).resolve().parents[2] / "data" / "real_configs"
CONFIGS = sorted(REAL.glob("*.json"))
GIB = 1 << 30


def load(name: str) -> config_mod.ModelConfig:
    return config_mod.from_config_dict(json.loads((REAL / f"{name}.json").read_text()))


def test_there_are_real_configs():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_invariants(path):
    cfg = config_mod.from_config_dict(json.loads(path.read_text()))
    context = planner.model_max_len(cfg)
    assert context and context >= 2048
    derived = layers.derived(cfg, context)
    attention_free = not layers.attention_layers(layers.kind_counts(cfg))      # Mamba only
    assert attention_free or (derived["head_dim"] and derived["head_dim"] % 8 == 0)
    assert derived["num_key_value_heads"] >= 1 or attention_free
    # every layer has a cache kind, except the MLP/MoE-only layers of Nemotron-H; a Mamba mixer
    # beside attention (Falcon-H1, Zamba2) is a second kind of the same layer
    counts, kinds = derived["layers_by_kind"], layers.kinds(cfg)
    assert len(kinds) == cfg.num_hidden_layers
    assert sum(n for k, n in counts.items() if k != "mamba") == sum(k not in (None, "mamba") for k in kinds)
    assert counts["mamba"] >= kinds.count("mamba")
    if not cfg.is_mla and not attention_free:
        assert cfg.num_attention_heads % cfg.effective_kv_heads == 0
    # hybrid accounting never costs more than full attention (up to the block padding of
    # the sliding-window groups), and is never free
    per_token = derived["kv_bytes_per_token"]
    by_kind = derived["kv_bytes_per_token_by_kind"]
    states = by_kind.get("linear", 0) + by_kind.get("mamba", 0)   # states, not in "full attention"
    block = layers.kv_spec(cfg).block_tokens()   # hybrids with a state: attention blocks grow
    assert 0 < per_token <= derived["kv_bytes_per_token_full_attention"] * (1.01 + block / context) + states + 1
    # With ample memory the plan is the model's own length, and one sequence of it fits.
    weights = 10 * GIB
    hw = planner.Hardware("cuda", 8, 141 * GIB, "9.0", source="given")
    result = planner.plan(cfg, weights, hw, plan_only())
    assert result.max_model_len == context
    assert 0 < result.kv_bytes_per_sequence <= result.kv_cache_bytes
    assert result.full_attention_max_model_len <= result.max_model_len


def test_gemma3_text_config_relies_on_class_defaults():
    # gemma-3-4b-it's text_config gives no max_position_embeddings, head_dim, heads: vLLM sees
    # Gemma3TextConfig's defaults (131072, 256, 8 heads / 4 KV heads).
    cfg = load("google--gemma-3-4b-it")
    assert planner.model_max_len(cfg) == 131072
    assert (cfg.effective_head_dim, cfg.num_attention_heads, cfg.effective_kv_heads) == (256, 8, 4)
    assert {"max_position_embeddings", "head_dim"} <= set(cfg.defaults_used)
    # 34 layers, every 6th full attention (sliding_window_pattern default 6), window 1024
    assert layers.kind_counts(cfg)["full"] == 5 and layers.kind_counts(cfg)["sliding"] == 29
    assert cfg.sliding_window == 1024


def test_gemma3_27b_rope_factor_not_applied():
    cfg = load("google--gemma-3-27b-it")   # rope_scaling linear x8, already in the 131072
    assert planner.model_max_len(cfg) == 131072
    assert cfg.effective_head_dim == 128 and layers.kind_counts(cfg)["full"] == 10


def test_gpt_oss_alternates_128_token_windows():
    cfg = load("openai--gpt-oss-120b")
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert layers.kind_counts(cfg) == {"full": 18, "sliding": 18, "chunked": 0, "mla": 0, "linear": 0, "mamba": 0}
    assert cfg.sliding_window == 128 and planner.model_max_len(cfg) == 131072   # yarn: not x32
    assert cfg.quant_method == "mxfp4"
    spec = layers.kv_spec(cfg)
    # full layers: 131072 tokens; sliding: cdiv(128 - 1 + 16384, 16) + 1 = 1033 blocks of 16
    # (16384 tokens in flight: 2 batches of 8192 on an 80 GiB GPU)
    one_layer = 2 * 8 * 64 * 2
    assert spec.sequence_bytes(131072, cfg) == 18 * one_layer * (131072 + 1033 * 16)
    assert layers.in_flight_tokens(24 << 30) == 4096 and layers.in_flight_tokens(141 << 30, pp=2) == 3 * 8192


def test_deepseek_v3_is_mla_and_yarn_is_not_multiplied():
    cfg = load("deepseek-ai--DeepSeek-V3")
    assert cfg.is_mla and layers.derived(cfg, 163840)["head_dim"] == 512 + 64
    assert planner.model_max_len(cfg) == 163840 and cfg.quant_method == "fp8"
    assert layers.layer_token_bytes(cfg, tp=8) == layers.layer_token_bytes(cfg, tp=1) == 576 * 2


def test_llama31_rope_llama3_not_multiplied():
    assert planner.model_max_len(load("meta-llama--Llama-3.1-8B-Instruct")) == 131072
    assert load("meta-llama--Llama-3.2-1B-Instruct").effective_head_dim == 64


def test_qwen25_use_sliding_window_false_is_full_attention():
    cfg = load("Qwen--Qwen2.5-7B-Instruct")   # sliding_window 131072 with use_sliding_window false
    assert cfg.sliding_window is None and set(layers.kinds(cfg)) == {"full"}


def test_qwen3_next_linear_layers_hold_a_state():
    cfg = load("Qwen--Qwen3-Next-80B-A3B-Thinking")   # full_attention_interval 4
    assert layers.kind_counts(cfg)["full"] == 12 and layers.kind_counts(cfg)["linear"] == 36
    spec = layers.kv_spec(cfg)
    assert spec.sequence_bytes(16, cfg) > spec.sequence_bytes(16, cfg) - spec.linear_state_bytes * 36 > 0


def test_quantization_methods():
    assert load("TheBloke--Llama-2-13B-chat-GPTQ").quant_method == "gptq"
    assert load("mistralai--Devstral-Small-2-24B-Instruct").quant_method == "fp8"


def test_hf_quant_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}))
    cfg = config_mod.read_model_config(tmp_path)
    assert cfg.quant_method == "modelopt"
    assert cfg.quantization["source"] == "hf_quant_config.json"


def test_mistral_v01_style_sliding_window_covers_every_layer():
    cfg = load("mistralai--Mistral-7B-Instruct-v0.2")   # sliding_window 32768 == the context
    assert set(layers.kinds(cfg)) == {"sliding"}
    assert planner.model_max_len(cfg) == 32768


def test_quant_bits_per_weight():
    from vmm.core.model import quant

    assert quant.method({"quant_method": "bitsandbytes", "load_in_4bit": True}) == "bitsandbytes"
    assert quant.bits_per_weight("bitsandbytes", {"load_in_8bit": True}) == 8.0
    assert quant.bits_per_weight("awq", {"quant_method": "awq", "bits": 4, "group_size": 128}) == 4.25
    assert quant.bits_per_weight("compressed-tensors", {"config_groups": {"group_0": {
        "weights": {"num_bits": 4}}}}) == 4.25
    assert quant.bits_per_weight("mxfp4", {"quant_method": "mxfp4"}) == 4.25
    assert quant.bits_per_weight(None) is None
    assert quant.method(None, {"quantization": {"quant_algo": "NVFP4"}}) == "modelopt_fp4"
    gptq = load("TheBloke--Llama-2-13B-chat-GPTQ")
    assert layers.derived(gptq, 4096)["quant_bits_per_weight"] == 4.25


def test_llama4_chunked_layers_are_planned_as_full_attention():
    # A config of Llama 4's shape (no published Llama 4 config is stored yet): vLLM 0.32
    # disables its hybrid KV cache manager for chunked local attention by default.
    cfg = config_mod.from_config_dict({"model_type": "llama4", "text_config": {
        "model_type": "llama4_text", "num_hidden_layers": 48, "attention_chunk_size": 8192,
        "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128}})
    assert layers.kind_counts(cfg)["chunked"] == 36 and layers.kind_counts(cfg)["full"] == 12
    spec = layers.kv_spec(cfg)
    assert not spec.hybrid
    assert spec.sequence_bytes(65536, cfg) == 48 * 65536 * 2 * 8 * 128 * 2


def test_length_keys_smallest_wins_config_model_max_length_overrides_tokenizer_caps():
    # vLLM 0.32 derive_max_model_len_and_key: the smallest key; a config model_max_length
    # (Command-R) overrides; then the tokenizer's model_max_length caps it.
    cfg = config_mod.from_config_dict({"model_type": "llama", "max_position_embeddings": 8192, "seq_length": 4096})
    assert planner.model_max_len(cfg) == 4096 and cfg.derived_max_len == "seq_length"
    cohere = config_mod.from_config_dict({"model_type": "cohere", "max_position_embeddings": 8192,
                                          "model_max_length": 131072})
    assert planner.model_max_len(cohere) == 131072
    capped = config_mod.from_config_dict({"model_type": "llama", "max_position_embeddings": 8192},
                                         tokenizer_config={"model_max_length": 2048})
    assert planner.model_max_len(capped) == 2048
