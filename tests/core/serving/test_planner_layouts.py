"""Named GPU types, what vLLM can load per rank, speculative decoding and the layout rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.core.errors import IncompatibleError, UsageError
from vmm.core.model.config import effective_text_config, from_config_dict
from vmm.core.serving import gpu_types, loadability, planner, speculative
from vmm.core.serving.request import plan_only

CONFIGS = Path(__file__).resolve().parents[2] / "data" / "real_configs"
REAL = sorted(p.name for p in CONFIGS.glob("*.json"))


def real(name: str):
    return from_config_dict(json.loads((CONFIGS / name).read_text()))


def hw(spec: str) -> planner.Hardware:
    g = gpu_types.parse_gpus(spec)
    return planner.Hardware("cuda", g.count, g.memory_bytes, g.compute_capability, source="given",
                            gpu_name=g.gpu_type.name)


# --- named GPU types ---------------------------------------------------------------------

@pytest.mark.parametrize("text,count,name,cc", [
    ("8xH200", 8, "H200", "9.0"), ("4xH100", 4, "H100", "9.0"), ("1xB200", 1, "B200", "10.0"),
    ("2xA100-40GB", 2, "A100-40GB", "8.0"), ("1xL4", 1, "L4", "8.9"), ("2 x rtx 4090", 2, "RTX4090", "8.9"),
    ("H20", 1, "H20", "9.0"), ("8*a100", 8, "A100-80GB", "8.0"), ("4xMI300X", 4, "MI300X", None),
])
def test_gpu_types_parse_as_operators_write_them(text, count, name, cc):
    spec = gpu_types.parse_gpus(text)
    assert (spec.count, spec.gpu_type.name, spec.compute_capability) == (count, name, cc)


def test_memory_is_what_the_driver_reports_or_the_datasheet_in_gib():
    assert gpu_types.lookup("H100").memory_bytes == 81559 << 20
    assert gpu_types.lookup("H200").memory_bytes == 143771 << 20
    assert gpu_types.lookup("L4").memory_bytes == 24 << 30
    # --gpu-memory next to a type overrides its memory (a MIG slice)
    assert gpu_types.parse_gpus("2xH100", 40 << 30).memory_bytes == 40 << 30


@pytest.mark.parametrize("text", ["8xFOO", "0xH100", "x", "8", "-1", "8xH100x2"])
def test_bad_gpu_specs_are_usage_errors_naming_the_types(text):
    with pytest.raises(UsageError) as err:
        gpu_types.parse_gpus(text)
    assert err.value.exit_code == 2


def test_architecture_choices_follow_the_capability():
    assert gpu_types.supports_fp8(gpu_types.lookup("L4")) and not gpu_types.supports_fp8(gpu_types.lookup("A100"))
    assert gpu_types.is_blackwell("10.0") and not gpu_types.is_blackwell("9.0")
    assert gpu_types.from_device_name("NVIDIA H100 80GB HBM3").name == "H100"
    assert gpu_types.from_device_name("NVIDIA A100-SXM4-40GB", 40 << 30).name == "A100-40GB"
    assert gpu_types.from_device_name("Tesla T4") is None


# --- loadability -------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL)
def test_every_real_config_loads_at_tp1_and_what_loads_passes_the_config_check(name):
    merged, _ = effective_text_config(json.loads((CONFIGS / name).read_text()))
    shapes = loadability.Shapes.from_config(merged)
    assert loadability.why_not(shapes, 1) is None
    for tp in range(2, 9):
        if loadability.why_not(shapes, tp) is None:
            # what the loaders accept, vLLM's ModelConfig check accepts too
            assert not shapes.num_attention_heads or shapes.num_attention_heads % tp == 0
            kv = shapes.num_kv_heads
            assert shapes.mla or not kv or kv % tp == 0 or tp % kv == 0
            assert -(-shapes.vocab_size // 64) * 64 % tp == 0


def test_glm_47_flash_cannot_load_at_tp5():
    cfg = real("zai-org--GLM-4.7-Flash.json")
    why = planner.valid_tp(cfg, 5)
    assert why and "1536" in why and "divide by 5" in why
    assert planner.valid_tp(cfg, 4) is None and planner.valid_tp(cfg, 2, dp=4, expert_parallel=True) is None


# Values the vLLM recipes state for these checkpoints (models/MiniMaxAI/MiniMax-M2.yaml
# "intermediate_size / 8 = 192 is not divisible by block_n = 128"; models/Qwen/
# Qwen3-Coder-480B-A35B-Instruct.yaml "FP8 block_n=128 + moe_intermediate_size=2560 -> TP must
# divide 20; cap at 4"); the rest of the shapes are small and divisible.
def _moe_fp8(**shape):
    base = {"hidden_size": 6144, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 151936, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    return loadability.Shapes.from_config({**base, **shape})


@pytest.mark.parametrize("shapes,tp8_why", [
    (_moe_fp8(num_local_experts=256, intermediate_size=1536), "192 per rank"),      # MiniMax-M2
    (_moe_fp8(num_experts=160, moe_intermediate_size=2560, intermediate_size=8192), "320 per rank"),  # Qwen3-Coder FP8
])
def test_block_fp8_experts_need_whole_blocks_per_rank_unless_expert_parallel(shapes, tp8_why):
    assert tp8_why in loadability.why_not(shapes, 8)
    assert loadability.why_not(shapes, 4) is None
    assert loadability.why_not(shapes, 8, expert_parallel=True) is None
    # DP without EP flattens MoE TP across the replicas: 8 again
    assert tp8_why in loadability.why_not(shapes, 1, dp=8)
    assert loadability.why_not(shapes, 1, dp=8, expert_parallel=True) is None


# --- speculative decoding ----------------------------------------------------------------

def test_mtp_uses_the_checkpoints_layers_and_vllms_method_name():
    cfg = real("deepseek-ai--DeepSeek-V3.json")
    spec = speculative.resolve("mtp", cfg.merged, cfg.model_type, "0.34.0")
    assert spec.config() == {"method": "mtp", "num_speculative_tokens": 1} and spec.extra_kv_layers == 1
    assert speculative.resolve("mtp:3", cfg.merged, cfg.model_type, "0.32.0").num_speculative_tokens == 3
    assert speculative.resolve("mtp", cfg.merged, cfg.model_type, "0.30.0").method == "deepseek_mtp"
    assert speculative.resolve("auto", cfg.merged, cfg.model_type, "0.34.0") is None
    assert speculative.resolve("none", cfg.merged, cfg.model_type, "0.34.0") is None


def test_eagle3_names_its_draft_and_counts_its_weights():
    cfg = real("openai--gpt-oss-120b.json")
    spec = speculative.resolve("eagle3:nvidia/gpt-oss-120b-Eagle3-v3:7", cfg.merged, cfg.model_type, None,
                               cfg.hidden_size, cfg.vocab_size)
    assert spec.config()["model"] == "nvidia/gpt-oss-120b-Eagle3-v3"
    assert spec.num_speculative_tokens == 7 and spec.draft_weight_bytes > 1 << 30


@pytest.mark.parametrize("value,exc", [("mtp", IncompatibleError), ("medusa", UsageError), ("mtp:0", UsageError),
                                       ("mtp:x", UsageError), ("eagle3:", UsageError), ("eagle3:noslash", UsageError),
                                       ("auto:2", UsageError)])
def test_bad_speculative_values_are_one_line_errors(value, exc):
    cfg = real("meta-llama--Llama-3.1-8B-Instruct.json")
    if value != "mtp":
        cfg = real("deepseek-ai--DeepSeek-V3.json")
    with pytest.raises(exc):
        speculative.resolve(value, cfg.merged, cfg.model_type, "0.34.0")


def test_mtp_layers_take_kv_cache_room():
    cfg = real("deepseek-ai--DeepSeek-V3.json")
    without = planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only(vllm_version="0.34.0"))
    with_mtp = planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only(vllm_version="0.34.0", speculative="mtp"))
    assert with_mtp.kv_cache_bytes_per_token > without.kv_cache_bytes_per_token
    assert with_mtp.max_concurrency < without.max_concurrency


# --- layout ------------------------------------------------------------------------------

def test_small_models_become_replicas_and_large_ones_tp_over_every_gpu():
    llama = real("meta-llama--Llama-3.1-8B-Instruct.json")
    p = planner.plan(llama, 16 * 10**9, hw("8xH100"), plan_only())
    assert (p.tensor_parallel_size, p.data_parallel_size, p.expert_parallel) == (1, 8, False)
    oss = real("openai--gpt-oss-120b.json")
    p = planner.plan(oss, 65 * 10**9, hw("4xH100"), plan_only())
    assert (p.tensor_parallel_size, p.data_parallel_size) == (4, 1)


def test_mla_moe_is_data_parallel_with_experts_split_and_overridable():
    cfg = real("deepseek-ai--DeepSeek-V3.json")
    p = planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only())
    assert (p.tensor_parallel_size, p.data_parallel_size, p.expert_parallel) == (1, 8, True)
    p = planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only(tensor_parallel_size=8))
    assert (p.tensor_parallel_size, p.data_parallel_size, p.expert_parallel) == (8, 1, True)
    p = planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only(tensor_parallel_size=8, expert_parallel=False))
    assert not p.expert_parallel
    with pytest.raises(IncompatibleError, match="exceeds the GPUs"):
        planner.plan(cfg, 671 * 10**9, hw("8xH200"), plan_only(tensor_parallel_size=8, data_parallel_size=2))


def test_target_vllm_decides_who_sizes_the_kv_cache():
    cfg = real("Qwen--Qwen3-32B.json")
    old = planner.plan(cfg, 65 * 10**9, hw("2xH100"), plan_only(vllm_version="0.33.0"))
    new = planner.plan(cfg, 65 * 10**9, hw("2xH100"), plan_only(vllm_version="0.34.0"))
    shared = planner.plan(cfg, 65 * 10**9, hw("2xH100"), plan_only(vllm_version="0.34.0", explicit_budget=True))
    assert old.gpu_memory_utilization == 0.92 and new.gpu_memory_utilization is None
    assert shared.gpu_memory_utilization == 1.0
    assert new.kv_cache_bytes > old.kv_cache_bytes


def test_max_num_seqs_only_where_the_cache_is_short_of_vllms_default():
    assert planner.default_max_num_seqs(80 << 30, "H100") == 1024
    assert planner.default_max_num_seqs(80 << 30, "NVIDIA A100-SXM4-80GB") == 256
    assert planner.default_max_num_seqs(24 << 30) == 256
    assert planner.max_num_seqs_for(10_000_000, 1024) is None
    assert planner.max_num_seqs_for(25_600, 256) == 100


def test_nvfp4_on_blackwell_gets_the_recipes_fp8_kv_cache():
    cfg = real("Qwen--Qwen3-32B.json")
    cfg.quant_method = "modelopt_fp4"
    dtype, note = planner.kv_cache_dtype_for(cfg, hw("1xB200"), plan_only())
    assert dtype == "fp8" and "Blackwell" in note
    assert planner.kv_cache_dtype_for(cfg, hw("1xH100"), plan_only())[0] is None
    assert planner.kv_cache_dtype_for(cfg, hw("1xH100"), plan_only(kv_cache_dtype="fp8_e5m2"))[0] == "fp8_e5m2"


def test_deepseek_v32_kv_cache_is_fp8_ds_mla_by_default():
    # DeepSeek-V3.2 is V3's shape plus the sparse-attention indexer (index_topk in its config);
    # vLLM stores its MLA cache as fp8_ds_mla: 656 B per token per layer instead of 1152, plus
    # 132 B of indexer cache (index_head_dim 128 as uint8 + 4 scale bytes).
    doc = json.loads((CONFIGS / "deepseek-ai--DeepSeek-V3.json").read_text())
    v3 = from_config_dict(doc)
    v32 = from_config_dict({**doc, "index_topk": 2048, "index_head_dim": 128})
    h20 = hw("8xH20")
    plain = planner.plan(v3, 671 * 10**9, h20, plan_only(vllm_version="0.34.0"))
    sparse = planner.plan(v32, 671 * 10**9, h20, plan_only(vllm_version="0.34.0"))
    assert sparse.kv_cache_bytes_per_token * 1152 == plain.kv_cache_bytes_per_token * (656 + 132)
    assert sparse.kv_cache_dtype is None and sparse.max_model_len == 163840
    assert any("fp8_ds_mla" in n for n in sparse.notes)


def test_ps_reads_the_layout_of_a_data_parallel_server_from_its_command():
    from vmm.core.serving import runtime

    argv = ["vllm", "serve", "m", "--tensor-parallel-size", "2", "--data-parallel-size", "4",
            "--enable-expert-parallel"]
    assert runtime.layout_of(argv) == {"tensor_parallel_size": 2, "data_parallel_size": 4, "expert_parallel": True}
    assert runtime.layout_of(["vllm", "serve", "m"]) == {"tensor_parallel_size": 1, "data_parallel_size": 1,
                                                          "expert_parallel": False}


def test_cpu_plans_refuse_layout_and_speculative_flags():
    cfg = real("meta-llama--Llama-3.2-1B-Instruct.json")
    cpu = planner.Hardware("cpu", 0, 16 << 30, source="host")
    assert planner.plan(cfg, 2_500_000_000, cpu, plan_only()).device == "cpu"
    for flags in ({"speculative": "mtp"}, {"data_parallel_size": 2}, {"expert_parallel": True}):
        with pytest.raises(IncompatibleError, match="CPU plan"):
            planner.plan(cfg, 2_500_000_000, cpu, plan_only(**flags))


def test_several_nodes_keep_tp_within_a_node_and_pp_across():
    llama = real("meta-llama--Llama-3.1-8B-Instruct.json")
    two_nodes = planner.Hardware("cuda", 8, 81559 << 20, "9.0", nodes=2, source="given")
    p = planner.plan(llama, 16 * 10**9, two_nodes, plan_only(nodes=2))
    assert (p.tensor_parallel_size, p.data_parallel_size, p.pipeline_parallel_size) == (8, 1, 2)


def test_a_tp_that_cannot_split_the_mamba_state_is_refused():
    """vLLM's Mamba2 mixer divides its conv dimension and heads by TP (mamba_utils.py, 0.32.0):
    Nemotron-H 8B with 132 Mamba heads (128 in the real config) passes every attention check
    at TP 8 and still cannot load, so TP 8 is refused and TP 4 is not."""
    from vmm.core.model.config import from_config_dict
    from vmm.core.serving import planner

    real = json.loads((Path(__file__).parents[2] / "data" / "real_configs" /
                       "nvidia--Nemotron-H-8B-Base-8K.json").read_text())
    assert planner.valid_tp(from_config_dict(real), 8) is None
    odd = from_config_dict({**real, "mamba_num_heads": 132})
    assert "state does not split over 8" in planner.valid_tp(odd, 8)
    assert planner.valid_tp(odd, 4) is None
