"""Can vLLM *load* the weights at this layout, not only pass its config check?

``ModelConfig``/``ParallelConfig`` (vllm/config/) check attention heads and KV heads; the
weight loaders check more, and fail only once the GPUs are up. Each rule below is the one
vLLM 0.32.0 applies, with the source it comes from:

- heads: ``num_attention_heads % tp`` and KV heads ``kv % tp == 0 or tp % kv == 0``
  (``vllm/config/model.py`` ``verify_with_parallel_config``; KV heads replicate when fewer);
- vocabulary: ``VocabParallelEmbedding`` pads to a multiple of 64 and splits the padded size
  (``vllm/model_executor/layers/vocab_parallel_embedding.py``, ``DEFAULT_VOCAB_PADDING_SIZE``);
- dense MLP: ``MergedColumnParallelLinear`` / ``RowParallelLinear`` ``divide(intermediate, tp)``
  (``vllm/model_executor/layers/linear.py`` with ``vllm/distributed/utils.py`` ``divide``);
- MoE experts: without expert parallelism ``FusedMoEConfig`` asserts
  ``intermediate_size % tp_size == 0`` where the MoE tp_size is tp x dp (TP is flattened across
  data-parallel ranks); with ``--enable-expert-parallel`` each rank owns whole experts, MoE tp
  is 1 and the expert columns are never split (``vllm/model_executor/layers/fused_moe/config.py``
  ``FusedMoEParallelConfig.make``);
- fp8 block-quantized checkpoints (``quantization_config.weight_block_size`` [block_n, block_k]):
  every column-parallel output per rank divides by block_n and every row-parallel input per
  rank by block_k (``vllm/model_executor/layers/quantization/utils/fp8_utils.py``
  ``validate_fp8_block_shape`` and ``validate_fp8_block_shape_moe``). This is why the vLLM
  recipes run Qwen3-Coder-480B-A35B-Instruct-FP8 (moe_intermediate_size 2560) at TP 4 or as
  DP + EP, and MiniMax-M2 at TP 4 or TP 8 + EP (github.com/vllm-project/recipes,
  ``models/Qwen/Qwen3-Coder-480B-A35B-Instruct.yaml``, ``models/MiniMaxAI/MiniMax-M2.yaml``).

The shapes are read from the config.json as transformers hands it to vLLM (the text config
merged over the top level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VOCAB_PADDING = 64


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class Shapes:
    """The weight shapes a tensor-parallel split cuts."""
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    dense_intermediate: int | None = None     # a dense MLP's width (None: every layer is MoE)
    moe_intermediate: int | None = None       # one expert's width
    num_experts: int | None = None
    shared_intermediate: int | None = None    # shared experts together (DeepSeek, Qwen MoE)
    block: tuple[int, int] | None = None      # fp8 weight_block_size [block_n, block_k]
    mla: tuple[int, int, int] | None = None   # MLA: qk_nope_head_dim, qk_rope_head_dim, v_head_dim

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)

    @classmethod
    def from_config(cls, merged: dict[str, Any]) -> "Shapes":
        """From a config dict (its text config merged in, as ``config.effective_text_config``)."""
        experts = next((_int(merged.get(k)) for k in ("n_routed_experts", "num_experts", "num_local_experts",
                                                      "moe_num_experts") if _int(merged.get(k))), None)
        inter = _int(merged.get("intermediate_size"))
        moe_inter = _int(merged.get("moe_intermediate_size"))
        dense = inter
        if experts and experts > 1:
            if moe_inter is None:
                moe_inter, dense = inter, None      # Mixtral, gpt-oss, MiniMax: intermediate_size is per expert
            elif not (_int(merged.get("first_k_dense_replace")) or merged.get("mlp_only_layers")
                      or (_int(merged.get("decoder_sparse_step")) or 1) > 1):
                dense = None                        # every layer MoE: intermediate_size is unused
        shared = _int(merged.get("shared_expert_intermediate_size"))
        n_shared = _int(merged.get("n_shared_experts"))
        if shared is None and n_shared and moe_inter:
            shared = n_shared * moe_inter           # DeepSeek/GLM: n_shared_experts x moe_intermediate_size
        quant = merged.get("quantization_config") if isinstance(merged.get("quantization_config"), dict) else {}
        block = quant.get("weight_block_size")
        block = (tuple(block) if isinstance(block, list) and len(block) == 2
                 and all(_int(b) for b in block) else None)
        heads = _int(merged.get("num_attention_heads"))
        hidden = _int(merged.get("hidden_size"))
        head_dim = _int(merged.get("head_dim")) or (hidden // heads if hidden and heads else None)
        mla = None
        if _int(merged.get("kv_lora_rank")) and _int(merged.get("qk_nope_head_dim")):
            mla = (merged["qk_nope_head_dim"], _int(merged.get("qk_rope_head_dim")) or 0,
                   _int(merged.get("v_head_dim")) or merged["qk_nope_head_dim"])
        return cls(hidden, heads, _int(merged.get("num_key_value_heads")) or heads, head_dim,
                   _int(merged.get("vocab_size")), dense, moe_inter, experts, shared, block, mla)


def _columns(shapes: Shapes, tp: int) -> list[tuple[str, int, bool]]:
    """(what, full width, split by tp) for every layer a TP split cuts along its columns."""
    out = []
    heads, hd = shapes.num_attention_heads, shapes.head_dim
    if heads and shapes.mla:
        nope, rope, v = shapes.mla
        out += [("the MLA q/kv projections", heads * (nope + rope), True), ("the MLA output", heads * v, True)]
    elif heads and hd:
        out.append(("the attention projections", heads * hd, True))
        if shapes.num_kv_heads and shapes.num_kv_heads >= tp:
            out.append(("the KV projections", shapes.num_kv_heads * hd, True))
    if shapes.dense_intermediate:
        out.append(("intermediate_size", shapes.dense_intermediate, True))
    if shapes.shared_intermediate:
        out.append(("the shared experts", shapes.shared_intermediate, True))
    return out


def why_not(shapes: Shapes, tp: int, *, dp: int = 1, expert_parallel: bool = False) -> str | None:
    """None when vLLM can load the weights at tensor parallel ``tp`` (x ``dp`` replicas, with or
    without expert parallelism), else the first reason it cannot, for an error message."""
    heads, kv = shapes.num_attention_heads, shapes.num_kv_heads
    if heads and heads % tp:
        return f"{heads} attention heads do not divide by {tp}"
    if kv and not shapes.mla and kv % tp and tp % kv:
        return f"{kv} KV heads and {tp} do not divide one another"
    if shapes.vocab_size and tp > 1:
        padded = -(-shapes.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
        if padded % tp:
            return f"the vocabulary padded to {padded} does not divide by {tp}"
    for what, width, _ in _columns(shapes, tp):
        if width % tp:
            return f"{what} ({width}) do not divide by {tp}"
    block_n, block_k = shapes.block or (None, None)
    if shapes.block and tp > 1:
        for what, width, _ in _columns(shapes, tp):
            per_rank = width // tp
            if per_rank % block_n or per_rank % block_k:
                return (f"{what}: {per_rank} columns per rank are not whole fp8 blocks of "
                        f"{block_n}x{block_k}")
    if shapes.is_moe and shapes.moe_intermediate:
        moe_tp = 1 if expert_parallel and tp * dp > 1 else tp * dp
        if shapes.moe_intermediate % moe_tp:
            return f"moe_intermediate_size {shapes.moe_intermediate} does not divide by {moe_tp}"
        per_rank = shapes.moe_intermediate // moe_tp
        if shapes.block and (per_rank % block_n or (moe_tp > 1 and per_rank % block_k)):
            return (f"expert columns: {per_rank} per rank (moe_intermediate_size {shapes.moe_intermediate} / "
                    f"{moe_tp}) are not whole fp8 blocks of {block_n}x{block_k}; expert parallelism keeps "
                    "experts whole")
    return None
