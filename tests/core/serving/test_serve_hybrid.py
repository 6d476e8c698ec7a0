"""Hybrid KV accounting end to end: sparse-file models built from real configs, planned by
``vmm serve --dry-run --json`` (sliding-window layers cost their window, not the context).

The weights are sparse safetensors with byte-exact headers (tests/builders.py); the configs are
the verbatim published files in tests/data/real_configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import builders as b
from conftest import run_vmm
from vmm.core.model import config as config_mod, layers
from vmm.core.serving.request import plan_only

REAL = Path(__file__).resolve().parents[2] / "data" / "real_configs"
GIB = 1 << 30


def siglip_tensors(vision: dict, dt: str = "BF16") -> dict:
    """A SigLIP vision tower's tensors as Gemma 3 checkpoints name them."""
    h, inter = vision["hidden_size"], vision["intermediate_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    pre = "vision_tower.vision_model."
    out = {pre + "embeddings.patch_embedding.weight": (dt, [h, 3, vision["patch_size"], vision["patch_size"]]),
           pre + "embeddings.position_embedding.weight": (dt, [patches, h])}
    for i in range(vision["num_hidden_layers"]):
        p = f"{pre}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{name}.weight"] = (dt, [h, h])
            out[p + f"self_attn.{name}.bias"] = (dt, [h])
        out[p + "mlp.fc1.weight"] = (dt, [inter, h])
        out[p + "mlp.fc2.weight"] = (dt, [h, inter])
        out[p + "layer_norm1.weight"] = (dt, [h])
        out[p + "layer_norm2.weight"] = (dt, [h])
    out[pre + "post_layernorm.weight"] = (dt, [h])
    return out


@pytest.fixture
def gemma3(root):
    doc = json.loads((REAL / "google--gemma-3-4b-it.json").read_text())
    cfg = config_mod.from_config_dict(doc)
    text = {"hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers, "tie_word_embeddings": True}
    tensors = {f"language_model.{k}": v for k, v in b.llama_like_tensors(text).items()}
    vision = siglip_tensors(doc["vision_config"])
    tensors.update(vision)
    tensors["multi_modal_projector.mm_input_projection_weight"] = ("BF16", [1152, cfg.hidden_size])
    b.make_model(root, "google/gemma-3-4b-it", cfg=doc, tensors=tensors, shards=2)
    return b.tensor_bytes(tensors), b.tensor_bytes(vision)


def dry(*args):
    run = run_vmm("serve", *args, "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    return run.json()


def test_gemma3_was_refused_for_lack_of_a_length_now_serves(gemma3):
    doc = dry("google/gemma-3-4b-it", "--gpus", "1", "--gpu-memory", "80GiB")
    assert doc["model_max_len"] == 131072 and doc["max_model_len"] == 131072


def test_vision_tower_weights_are_counted(gemma3):
    total, vision = gemma3
    doc = dry("google/gemma-3-4b-it", "--gpus", "1", "--gpu-memory", "80GiB")
    assert doc["estimate"]["weight_bytes"] == total and vision > 400 * (1 << 20)


@pytest.mark.parametrize("gib", [16, 24])
def test_gemma3_on_one_small_gpu_plans_far_beyond_full_attention(gemma3, gib):
    doc = dry("google/gemma-3-4b-it", "--gpus", "1", "--gpu-memory", f"{gib}GiB")
    est = doc["estimate"]
    assert est["kv_accounting"] == "hybrid"
    full = est["full_attention_max_model_len"]
    assert doc["max_model_len"] == 131072 > full
    if gib == 16:
        assert doc["max_model_len"] > 3.5 * full
    assert est["kv_bytes_per_sequence"] <= est["kv_cache_bytes"]
    # full attention at 131072 tokens: 34 layers x 2 x 4 KV heads x 256 x 2 bytes per token
    assert est["kv_bytes_per_sequence"] < 131072 * 34 * 4096 / 4
    assert any("hybrid KV cache: 5 full, 29 sliding" in n for n in doc["notes"])


def test_gemma3_capped_context_still_fits_one_sequence(gemma3):
    doc = dry("google/gemma-3-4b-it", "--gpus", "1", "--gpu-memory", "12GiB")
    est = doc["estimate"]
    assert 16 <= doc["max_model_len"] < 131072
    assert est["kv_bytes_per_sequence"] <= est["kv_cache_bytes"]
    # 12 GiB: 2048-token batches, 2 in flight: a sliding layer holds 1023 + 4096 tokens
    assert doc["max_model_len"] > 3 * est["full_attention_max_model_len"]


def test_short_contexts_cost_the_padding_layers():
    """Below window + in-flight tokens a sliding layer holds the whole context, and vLLM pads
    29 sliding layers to 30 (groups of 5): hybrid then costs a little MORE than full
    attention, which is what vLLM reserves (vllm/v1/core/kv_cache_utils.py, 0.32.0)."""
    cfg = config_mod.from_config_dict(json.loads((REAL / "google--gemma-3-4b-it.json").read_text()))
    hybrid, full = layers.kv_spec(cfg, in_flight=4096), layers.kv_spec(cfg, hybrid=False)
    assert hybrid.sequence_bytes(4096, cfg) > full.sequence_bytes(4096, cfg)
    assert hybrid.sequence_bytes(32768, cfg) < full.sequence_bytes(32768, cfg) / 2


@pytest.mark.parametrize("name", ["openai--gpt-oss-120b", "google--gemma-2-9b-it", "google--gemma-3-27b-it",
                                  "Qwen--Qwen3-Next-80B-A3B-Thinking", "deepseek-ai--DeepSeek-V3"])
@pytest.mark.parametrize("gib", [24, 48, 80])
def test_capped_context_is_the_longest_that_fits(name, gib):
    """When memory caps the context, one more block would not fit (the plan is tight)."""
    from vmm.core.serving import planner

    cfg = config_mod.from_config_dict(json.loads((REAL / f"{name}.json").read_text()))
    hw = planner.Hardware("cuda", 1, gib * GIB, "9.0", source="given")
    try:
        result = planner.plan(cfg, 12 * GIB, hw, plan_only())
    except Exception as exc:   # too small for the runtime margin: exit 6 is right
        assert getattr(exc, "exit_code", None) == 6
        return
    spec = planner._kv_spec(cfg, 1, None, in_flight=layers.in_flight_tokens(gib * GIB))
    assert spec.sequence_bytes(result.max_model_len, cfg) == result.kv_bytes_per_sequence <= result.kv_cache_bytes
    if result.max_model_len < result.model_max_len:
        assert spec.sequence_bytes(result.max_model_len + 16, cfg) > result.kv_cache_bytes


def test_estimate_keeps_every_key_and_adds_the_sequence(gemma3):
    est = dry("google/gemma-3-4b-it", "--gpus", "1", "--gpu-memory", "24GiB")["estimate"]
    assert {"weight_bytes", "kv_cache_bytes_per_token", "gpu_count", "gpu_memory_bytes", "kv_cache_bytes",
            "kv_cache_tokens", "overhead_bytes"} <= set(est)
    assert {"kv_bytes_per_sequence", "kv_accounting", "full_attention_max_model_len"} <= set(est)


def test_full_attention_model_reserves_every_layer(root):
    doc = json.loads((REAL / "meta-llama--Llama-3.1-8B-Instruct.json").read_text())
    b.make_model(root, "meta-llama/Llama-3.1-8B-Instruct", cfg=doc,
                 tensors={"model.embed_tokens.weight": ("BF16", [1024, 64])})
    out = dry("meta-llama/Llama-3.1-8B-Instruct", "--gpus", "1", "--gpu-memory", "80GiB")
    est = out["estimate"]
    assert est["kv_accounting"] == "full" and out["max_model_len"] == 131072
    assert est["kv_bytes_per_sequence"] == 131072 * 32 * 2 * 8 * 128 * 2 == 131072 * est["kv_cache_bytes_per_token"]
