"""Multi-query, grouped-KV and Mamba-hybrid families read as vLLM reads them, and planned as
vLLM allocates them. Real configs: tests/data/real_configs (sources in tests/data/SOURCES.md);
the ``shaped`` ones are built here in the family's shape (sizes chosen, not published)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import builders as b
from conftest import REPO, run_vmm
from vmm.core.model import config as config_mod, layers
from vmm.core.serving import planner
from vmm.core.serving.request import plan_only

REAL = REPO / "tests" / "data" / "real_configs"
GIB = 1 << 30


def load(stem: str) -> config_mod.ModelConfig:
    return config_mod.from_config_dict(json.loads((REAL / f"{stem}.json").read_text()))


def test_nemotron_h_counts_its_attention_and_mamba_layers_from_the_pattern():
    cfg = load("nvidia--Nemotron-H-8B-Base-8K")     # M-M-M-M*-... : 24 Mamba2, 4 attention, 24 MLP
    counts = layers.kind_counts(cfg)
    assert (counts["full"], counts["mamba"]) == (4, 24)
    assert layers.kinds(cfg).count(None) == 24
    # Mamba2 state: conv (kernel - 1, intermediate + 2 groups x state), SSM (heads, head_dim, state)
    assert layers.mamba_state_shapes(cfg) == ((3, 128 * 64 + 2 * 8 * 128), (128, 64, 128))
    assert layers.mamba_state_shapes(cfg, 4) == ((3, (8192 + 2048) // 4), (32, 64, 128))
    assert layers.state_dtypes(cfg, "mamba") == ("bfloat16", "float32")     # vLLM's NemotronH default
    assert layers.mamba_state_page_bytes(cfg) == 3 * 10240 * 2 + 128 * 64 * 128 * 4


def test_nemotron_3_nano_pattern_is_6_attention_and_23_mamba():
    # the layout the issue reports for Nemotron-3-Nano-30B (hybrid_override_pattern; M/*/E/-)
    pattern = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
    cfg = config_mod.from_config_dict({"model_type": "nemotron_h", "hybrid_override_pattern": pattern,
                                       "num_hidden_layers": len(pattern), "hidden_size": 2688,
                                       "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
                                       "mamba_num_heads": 64, "mamba_head_dim": 64, "n_groups": 8,
                                       "ssm_state_size": 128, "conv_kernel": 4, "torch_dtype": "bfloat16"})
    counts = layers.kind_counts(cfg)
    assert (counts["full"], counts["mamba"]) == (pattern.count("*"), pattern.count("M")) == (6, 23)


def test_jamba_attention_every_8th_layer_from_offset_4():
    cfg = load("ai21labs--AI21-Jamba-1.5-Mini")
    assert [i for i, k in enumerate(layers.kinds(cfg)) if k == "full"] == [4, 12, 20, 28]
    assert layers.kind_counts(cfg)["mamba"] == 28
    assert cfg.mamba["version"] == 1                # Mamba1: conv (3, 8192), SSM (8192, 16)
    assert layers.mamba_state_shapes(cfg) == ((3, 8192), (8192, 16))


def test_chatglm_reads_its_own_names():
    cfg = load("THUDM--chatglm3-6b-32k")            # num_layers, multi_query_group_num, seq_length
    assert (cfg.num_hidden_layers, cfg.effective_kv_heads, cfg.effective_head_dim) == (28, 2, 128)
    assert planner.model_max_len(cfg) == 32768


@pytest.mark.parametrize("doc, full, mamba", [
    ({"model_type": "falcon_h1", "hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 8,
      "num_key_value_heads": 2, "head_dim": 64, "mamba_d_ssm": 1536, "mamba_n_heads": 24, "mamba_d_head": 64,
      "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4}, 12, 12),        # both in every layer
    ({"model_type": "granitemoehybrid", "hidden_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 12,
      "num_key_value_heads": 4, "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_n_groups": 1,
      "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2,
      "layer_types": ["mamba", "mamba", "mamba", "attention"] * 2}, 2, 6),
    ({"model_type": "granitemoehybrid", "hidden_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 12,
      "num_key_value_heads": 4, "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_n_groups": 1,
      "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2,
      "layer_types": ["linear_attention", "full_attention"] * 2}, 2, 2),        # transformers 5 names
    ({"model_type": "zamba2", "hidden_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 32,
      "attention_head_dim": 128, "mamba_d_state": 64, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_ngroups": 1,
      "n_mamba_heads": 64, "mamba_headdim": 64,
      "layers_block_type": ["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"]}, 2, 6),
    ({"model_type": "mamba2", "hidden_size": 1024, "num_hidden_layers": 4, "expand": 2, "n_groups": 1,
      "num_heads": 32, "head_dim": 64, "state_size": 128, "conv_kernel": 4}, 0, 4),
], ids=["falcon-h1-shaped", "granite-4.0-h-shaped", "granite-transformers5-names", "zamba2-shaped",
        "mamba2-shaped"])
def test_hybrid_layouts(doc, full, mamba):
    cfg = config_mod.from_config_dict({**doc, "torch_dtype": "bfloat16"})
    counts = layers.kind_counts(cfg)
    assert (counts["full"], counts["mamba"]) == (full, mamba)
    assert layers.mamba_state_page_bytes(cfg) > 0


def test_a_plan_counts_attention_kv_only_for_attention_layers_and_state_pages_per_sequence():
    cfg = load("nvidia--Nemotron-H-8B-Base-8K")
    spec = layers.kv_spec(cfg)
    per_token = layers.layer_token_bytes(cfg)               # one attention layer: 2 x 8 x 128 x 2
    assert per_token == 4096
    # vLLM grows the attention block until one page holds a Mamba page (16-token kernel alignment)
    block = spec.block_tokens()
    assert block == 16 * -(-layers.mamba_state_page_bytes(cfg) // (16 * per_token)) == 1040
    page = block * per_token
    # 4 attention layers, 24 Mamba layers: groups of 4; 2 state pages per sequence (prefix caching)
    assert spec.sequence_bytes(8192, cfg) == 4 * page * (-(-8192 // block) + 6 * 2)
    everything_attention = 52 * 8192 * per_token
    assert spec.sequence_bytes(8192, cfg) < everything_attention / 5
    weights = 16 * GIB
    hw = planner.Hardware("cuda", 1, 80 * GIB, "9.0", source="given")
    plan = planner.plan(cfg, weights, hw, plan_only())
    assert plan.max_model_len == 8192 and plan.kv_bytes_per_sequence == spec.sequence_bytes(8192, cfg)
    assert plan.kv_cache_bytes_per_token == 4 * per_token    # the full-attention equivalent: 4 layers


@pytest.mark.parametrize("doc, kv", [
    ({"model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 4544,
      "num_hidden_layers": 32, "num_attention_heads": 71, "multi_query": True}, 1),
    ({"model_type": "gpt_bigcode", "architectures": ["GPTBigCodeForCausalLM"], "n_embd": 6144, "n_layer": 40,
      "n_head": 48, "n_positions": 8192, "multi_query": True}, 1),
])
def test_multi_query_kv_per_token_is_one_head(doc, kv):
    cfg = config_mod.from_config_dict({**doc, "torch_dtype": "bfloat16"})
    assert cfg.effective_kv_heads == kv
    derived = layers.derived(cfg, planner.model_max_len(cfg))
    assert derived["kv_bytes_per_token"] == cfg.num_hidden_layers * 2 * kv * cfg.effective_head_dim * 2


def test_inspect_json_reports_mamba_layers(root):
    b.make_model(root, "nvidia/Nemotron-H-8B-Base-8K", cfg=json.loads((REAL / "nvidia--Nemotron-H-8B-Base-8K.json")
                                                                      .read_text()),
                 tensors={"backbone.embeddings.weight": ("BF16", [1024, 64])})
    run = run_vmm("inspect", "nvidia/Nemotron-H-8B-Base-8K", "--json")
    assert run.exit_code == 0, run.stderr
    derived = run.json()["derived"]
    assert derived["layers_by_kind"]["mamba"] == 24 and derived["layers_by_kind"]["full"] == 4
    assert derived["mamba_state_bytes_per_sequence"] > 0
    assert "mamba" in derived["kv_bytes_per_token_by_kind"]
    text = run_vmm("inspect", "nvidia/Nemotron-H-8B-Base-8K")
    assert "24 mamba" in text.stdout


@pytest.mark.parametrize("arch, model_type", [("MPTForCausalLM", "mpt"), ("RWForCausalLM", "RefinedWebModel"),
                                              ("StableLMEpochForCausalLM", "stablelm_epoch")])
def test_architectures_vllm_dropped_fail_checks_vllm_line_with_the_last_version(root, arch, model_type):
    cfg = {"model_type": model_type, "architectures": [arch], "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 100}
    b.make_model(root, "org/old", cfg=cfg, tensors={"x": ("BF16", [4, 4])})
    run = run_vmm("check", "org/old", "--json")
    vllm = next(c for c in run.json()["checks"] if c["name"] == "vllm")
    assert vllm["status"] == "fail" and "last served in 0.28" in vllm["detail"], vllm
