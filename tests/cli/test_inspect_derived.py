"""inspect's ``derived``: what serving uses, from real published configs (sparse weights)."""

from __future__ import annotations

import json
from pathlib import Path

import builders as b
from conftest import run_vmm

REAL = Path(__file__).resolve().parents[1] / "data" / "real_configs"


def _make(root, name: str) -> None:
    doc = json.loads((REAL / f"{name.replace('/', '--')}.json").read_text())
    b.make_model(root, name, cfg=doc, tensors={"model.embed_tokens.weight": ("BF16", [1024, 64])})


def test_inspect_json_derived_for_gpt_oss(root):
    _make(root, "openai/gpt-oss-120b")
    run = run_vmm("inspect", "openai/gpt-oss-120b", "--json")
    assert run.exit_code == 0, run.stderr
    derived = run.json()["derived"]
    assert derived["head_dim"] == 64 and derived["num_key_value_heads"] == 8
    assert derived["layers_by_kind"]["full"] == 18 and derived["layers_by_kind"]["sliding"] == 18
    assert derived["context_length"] == 131072 and derived["sliding_window"] == 128
    # full layers: 18 x 2 x 8 x 64 x 2 B per token; sliding ones hold their window + in flight
    assert derived["kv_bytes_per_token_by_kind"]["full"] == 18 * 2048
    assert derived["kv_bytes_per_token"] < derived["kv_bytes_per_token_full_attention"] == 36 * 2048
    assert derived["quant_method"] == "mxfp4"


def test_inspect_derived_gemma3_defaults_and_mla(root):
    _make(root, "google/gemma-3-4b-it")
    _make(root, "deepseek-ai/DeepSeek-V3")
    gemma = run_vmm("inspect", "google/gemma-3-4b-it", "--json").json()["derived"]
    assert gemma["context_length"] == 131072 and gemma["head_dim"] == 256
    assert "max_position_embeddings" in gemma["defaults_used"]
    deepseek = run_vmm("inspect", "deepseek-ai/DeepSeek-V3", "--json").json()["derived"]
    assert deepseek["use_mla"] and deepseek["head_dim"] == 576 and deepseek["num_key_value_heads"] == 1
    assert deepseek["layers_by_kind"]["mla"] == 61
    human = run_vmm("inspect", "google/gemma-3-4b-it")
    assert "layer kinds       5 full, 29 sliding (window 1024)" in human.stdout
