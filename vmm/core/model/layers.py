"""Layer kinds (full, sliding-window, chunked, MLA, linear, Mamba) and the KV cache vLLM allocates for them.

Every rule names its source in vLLM 0.32.0 (the CPU build vmm is tested against) or
transformers 5.19 (the config classes that build ``layer_types`` when config.json has none).

- ``layer_types``: transformers' per-layer list ("full_attention", "sliding_attention",
  "linear_attention", "chunked_attention"). vLLM's model files read it (e.g.
  vllm/model_executor/models/llama.py: a "sliding_attention" layer gets
  ``config.sliding_window``; gemma2.py, gemma3.py, gpt_oss.py the same).
- Without one, a model-level ``sliding_window`` applies to every layer
  (vllm/model_executor/layers/attention/attention.py: ``cache_config.sliding_window``):
  Mistral v0.1, Phi-3-mini-4k.
- KV per sequence of length L, per vLLM's hybrid KV cache manager
  (vllm/v1/kv_cache_interface.py ``max_memory_usage_bytes`` of each spec, and
  vllm/v1/core/kv_cache_utils.py ``_get_kv_cache_groups_uniform_page_size``):
  full attention ``cdiv(L, 16)`` blocks; sliding window
  ``cdiv(min(window - 1 + in_flight, L), 16) + 1`` blocks, where in_flight is the tokens
  scheduled but not settled (``in_flight_tokens``); chunked local attention ``cdiv(min(chunk + in_flight, L), 16)``;
  layers of each kind are grouped in groups of the smallest kind's count (padding the last
  group of a kind), and one block of a group costs the group size x one layer's block.
- MLA (DeepSeek V2/V3/R1): one latent of ``kv_lora_rank + qk_rope_head_dim`` values per token
  and layer, replicated on every TP rank (vllm/v1/kv_cache_interface.py ``MLAAttentionSpec``).
- Linear attention (Qwen3-Next gated delta net) and Mamba (Nemotron-H, granite-4.0-h,
  Falcon-H1, Jamba, Zamba2, Mamba/Mamba2): a constant state per sequence and layer
  (vllm/model_executor/layers/mamba/mamba_utils.py ``MambaStateShapeCalculator``
  ``gated_delta_net_state_shape``, ``mamba1_state_shape``, ``mamba2_state_shape``). vLLM keeps
  each in ``MambaSpec`` pages, 2 per sequence with prefix caching (``mamba_cache_mode``
  "align", ``MambaSpec.max_memory_usage_bytes``). In a model that also has attention the
  attention block grows until one attention page holds a state page, and the state page is
  padded to the attention page (vllm/platforms/interface.py ``_align_hybrid_block_size``,
  kernel alignment 16 tokens; 128 with MLA); then all kinds share the grouping above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vmm.core.model import quant
from vmm.core.model.config import ModelConfig, dtype_bytes, rope_entries

BLOCK_TOKENS = 16
GIB = 1 << 30
# Tokens a sliding-window layer keeps in flight: max_concurrent_batches x max_num_batched_tokens
# (vllm/config/vllm.py ``max_in_flight_tokens``, 0.32.0). The OpenAI server's default
# max_num_batched_tokens is 16384 on GPUs of >= 160 GiB, 8192 on >= 70 GiB (H100/H200; A100
# gets 2048, vmm cannot tell it apart and keeps the larger, safe figure), 2048 below
# (vllm/engine/arg_utils.py); async scheduling, on by default, keeps pp + 1 batches in flight
# (``max_concurrent_batches``). IN_FLIGHT_TOKENS: an 80 GiB GPU, pp 1 (inspect's figure).
IN_FLIGHT_TOKENS = 2 * 8192


def in_flight_tokens(gpu_memory_bytes: int | None, pp: int = 1) -> int:
    if gpu_memory_bytes is None:
        return IN_FLIGHT_TOKENS
    if gpu_memory_bytes >= 160 * GIB:
        batched = 16384
    elif gpu_memory_bytes >= 70 * GIB:
        batched = 8192
    else:
        batched = 2048
    return (pp + 1) * batched

DEFAULT_MAX_LEN = 2048
# rope types whose max_position_embeddings is already the scaled length (vLLM 0.32).
_ROPE_ALREADY_SCALED = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}

FULL, SLIDING, CHUNKED, MLA, LINEAR, MAMBA = "full", "sliding", "chunked", "mla", "linear", "mamba"
KINDS = (FULL, SLIDING, CHUNKED, MLA, LINEAR, MAMBA)
STATE_KINDS = (LINEAR, MAMBA)           # a constant state per sequence, no per-token KV
STATE_PAGES = 2                         # MambaSpec pages per sequence in "align" mode
# "mlp": a layer without attention or state (Nemotron-H "-" and "E" blocks).
_TYPE_KIND = {"full_attention": FULL, "sliding_attention": SLIDING, "chunked_attention": CHUNKED,
              "linear_attention": LINEAR, "mamba": MAMBA, "mlp": None}



def model_max_len(cfg: ModelConfig) -> int | None:
    """The model's maximum context as vLLM derives it with no --max-model-len
    (vLLM 0.32.0 vllm/config/model.py ``_get_and_verify_max_len``): the smallest length key
    (config.json's own model_max_length overrides it), capped by the tokenizer's
    model_max_length, times the RoPE factor unless the type is already scaled or the model is
    Gemma 3; LongRoPE defaults to original_max_position_embeddings."""
    length = cfg.max_position_embeddings
    if cfg.config_model_max_length:
        length = cfg.config_model_max_length
    tokenizer = cfg.tokenizer_model_max_length
    if tokenizer is None and cfg.config_model_max_length is None:
        tokenizer = cfg.model_max_length        # a ModelConfig built by hand
    if length is None:
        if not cfg.num_hidden_layers:
            return tokenizer
        # no length key at all: vLLM assumes 2048 (vllm/config/model.py _get_and_verify_max_len,
        # "Assuming the model's maximum length is 2048"), still capped by the tokenizer's
        length = DEFAULT_MAX_LEN
    if tokenizer:
        length = min(length, tokenizer)
    entries = rope_entries(cfg.rope_scaling)
    if entries and "gemma3" not in (cfg.model_type or ""):
        factor = 1.0
        for rope in entries:
            rope_type = rope.get("rope_type") or rope.get("type")
            if rope_type not in _ROPE_ALREADY_SCALED and isinstance(rope.get("factor"), (int, float)):
                factor = rope["factor"]
        length = int(length * factor)
    # vllm/transformers_utils/config.py patch_rope_parameters renames legacy "su" to "longrope".
    if any((r.get("rope_type") or r.get("type")) in ("longrope", "su") for r in entries):
        return cfg.original_max_position_embeddings or length
    return length


def kinds(cfg: ModelConfig) -> list[str | None]:
    """Each layer's cache kind as vLLM allocates it: its attention kind, MAMBA for a Mamba-only
    layer, None for a layer with neither (a parallel hybrid's Mamba mixers, Falcon-H1's, are
    counted in kind_counts)."""
    n = cfg.num_hidden_layers or 0
    if cfg.is_mla:
        return [MLA] * n
    if cfg.layer_types:
        out = [_TYPE_KIND.get(t, FULL) for t in cfg.layer_types]
        return [FULL if (k == SLIDING and not cfg.sliding_window) or (k == CHUNKED and not cfg.attention_chunk_size)
                else k for k in out]
    if cfg.sliding_window:
        return [SLIDING] * n
    return [FULL] * n


def kind_counts(cfg: ModelConfig) -> dict[str, int]:
    """Layers per cache kind; MAMBA counts every Mamba mixer (one per layer in Falcon-H1 and
    Zamba2, whose attention layers hold one too)."""
    counts = dict.fromkeys(KINDS, 0)
    for kind in kinds(cfg):
        if kind is not None and kind != MAMBA:
            counts[kind] += 1
    counts[MAMBA] = cfg.mamba["layers"] if cfg.mamba else 0
    return counts


def attention_layers(counts: dict[str, int]) -> int:
    return sum(n for k, n in counts.items() if k not in STATE_KINDS)


def layer_token_bytes(cfg: ModelConfig, tp: int = 1, kv_dtype: str | None = None) -> int | None:
    """KV bytes one token costs in ONE attention layer on one GPU."""
    nbytes = dtype_bytes(kv_dtype or cfg.torch_dtype)
    if cfg.is_mla:
        return int((cfg.kv_lora_rank + (cfg.qk_rope_head_dim or 0)) * nbytes)
    kv_heads, head_dim = cfg.effective_kv_heads, cfg.effective_head_dim
    if not kv_heads or not head_dim:
        return None
    return int(2 * max(1, kv_heads // tp) * head_dim * nbytes)


def linear_state_shapes(cfg: ModelConfig, tp: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(conv state, recurrent state) of one gated-delta-net layer (Qwen3-Next): conv
    (kernel - 1, 2 key dim + value dim), recurrent (v_heads, v_dim, k_dim), split by TP
    (vLLM 0.32.0 mamba_utils.py ``MambaStateShapeCalculator.gated_delta_net_state_shape``)."""
    la = cfg.linear_attention
    if not la:
        return None
    conv_dim = 2 * la["num_key_heads"] * la["key_head_dim"] + la["num_value_heads"] * la["value_head_dim"]
    return ((la["conv_kernel_dim"] - 1, conv_dim // tp),
            (la["num_value_heads"] // tp, la["value_head_dim"], la["key_head_dim"]))


def linear_state_page_bytes(cfg: ModelConfig, tp: int = 1) -> int:
    """One linear-attention layer's state page, both states at the model dtype
    (``MambaStateDtypeCalculator.gated_delta_net_state_dtype``)."""
    shapes = linear_state_shapes(cfg, tp)
    if not shapes:
        return 0
    return int(sum(math.prod(s) for s in shapes) * dtype_bytes(cfg.torch_dtype))


def linear_state_bytes(cfg: ModelConfig, tp: int = 1) -> int:
    """One linear-attention layer's state per sequence, unpadded: 2 pages with prefix caching
    (mamba_cache_mode "align", ``MambaSpec.max_memory_usage_bytes``, vllm/v1/kv_cache_interface.py)."""
    return STATE_PAGES * linear_state_page_bytes(cfg, tp)


def _extra_groups(n_groups: int, tp: int) -> int:
    # MambaStateShapeCalculator.extra_groups_for_head_shards: groups replicated to follow the heads.
    return 0 if n_groups % tp == 0 else tp - n_groups


def mamba_state_shapes(cfg: ModelConfig, tp: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(conv state, SSM state) shapes of one Mamba layer, as vLLM 0.32.0
    ``MambaStateShapeCalculator.mamba1_state_shape`` / ``mamba2_state_shape`` give them
    (conv layout "SD": (kernel - 1, dim); no speculative tokens)."""
    m = cfg.mamba
    if not m:
        return None
    if m["version"] == 1:
        dim = m["intermediate_size"] // tp
        return (m["conv_kernel"] - 1, dim), (dim, m["state_size"])
    groups = m["n_groups"] + _extra_groups(m["n_groups"], tp)
    conv_dim = m["intermediate_size"] + 2 * groups * m["state_size"]
    return (m["conv_kernel"] - 1, conv_dim // tp), (m["num_heads"] // tp, m["head_dim"], m["state_size"])


def state_dtypes(cfg: ModelConfig, kind: str) -> tuple[str, str]:
    """(conv, SSM) state dtypes of a state kind: the model dtype, the SSM state at
    mamba_ssm_cache_dtype where the model sets one (Nemotron-H float32)."""
    model = str(cfg.torch_dtype or "bfloat16").removeprefix("torch.")
    if kind == MAMBA and cfg.mamba and cfg.mamba.get("ssm_dtype"):
        return model, cfg.mamba["ssm_dtype"]
    return model, model


def mamba_state_page_bytes(cfg: ModelConfig, tp: int = 1) -> int:
    """One Mamba layer's state page: conv state at the model dtype, SSM state at
    mamba_ssm_cache_dtype (the model dtype unless the model sets it: Nemotron-H float32;
    ``MambaStateDtypeCalculator``, mamba_utils.py)."""
    shapes = mamba_state_shapes(cfg, tp)
    if not shapes:
        return 0
    conv, ssm = (math.prod(s) for s in shapes)
    conv_dtype, ssm_dtype = state_dtypes(cfg, MAMBA)
    return int(conv * dtype_bytes(conv_dtype) + ssm * dtype_bytes(ssm_dtype))


def _blocks(kind: str, length: int, cfg: ModelConfig, in_flight: int, block: int = BLOCK_TOKENS) -> int:
    if kind in STATE_KINDS:
        return STATE_PAGES
    if kind == SLIDING and cfg.sliding_window:
        return math.ceil(min(cfg.sliding_window - 1 + in_flight, length) / block) + 1
    if kind == CHUNKED and cfg.attention_chunk_size:
        return math.ceil(min(cfg.attention_chunk_size + in_flight, length) / block)
    return math.ceil(length / block)


@dataclass
class KvSpec:
    """What one sequence costs in the KV cache at a given TP."""
    layer_token_bytes: int            # one attention layer, one token (0: attention-free)
    counts: dict[str, int]
    linear_state_bytes: int           # per linear layer, per sequence (2 unpadded pages)
    hybrid: bool = True               # False: every layer counted at the whole context
    in_flight: int = IN_FLIGHT_TOKENS
    mamba_state_bytes: int = 0        # per Mamba layer, per sequence (2 unpadded pages)
    block_alignment: int = BLOCK_TOKENS   # attention kernel block alignment (128 with MLA)

    def _state_page(self) -> int:
        """The largest unpadded state page of the kinds present."""
        pages = [self.linear_state_bytes if self.counts.get(LINEAR) else 0,
                 self.mamba_state_bytes if self.counts.get(MAMBA) else 0]
        return max(pages) // STATE_PAGES

    def block_tokens(self) -> int:
        """Tokens per attention block: 16, or as many as one state page needs
        (vllm/platforms/interface.py ``_align_hybrid_block_size``, 0.32.0)."""
        page = self._state_page()
        if not page or not self.layer_token_bytes or not attention_layers(self.counts):
            return BLOCK_TOKENS
        align = self.block_alignment
        return max(BLOCK_TOKENS, align * math.ceil(page / (align * self.layer_token_bytes)))

    def group_size(self) -> int:
        present = [c for c in self.counts.values() if c]
        if not present:
            return 0
        low, high = min(present), max(present)
        return high if high < 1.5 * low else low

    def kind_bytes(self, length: int, cfg: ModelConfig) -> dict[str, int]:
        """Bytes vLLM reserves for one sequence of ``length`` tokens, per kind (padding included)."""
        out: dict[str, int] = {}
        attn = attention_layers(self.counts)
        if not self.hybrid:
            for kind, count in self.counts.items():
                if count and kind in STATE_KINDS:
                    out[kind] = count * (self.linear_state_bytes if kind == LINEAR else self.mamba_state_bytes)
                elif count:
                    out[kind] = count * math.ceil(length / BLOCK_TOKENS) * BLOCK_TOKENS * self.layer_token_bytes
            return out
        if not attn:   # attention-free (Mamba): unpadded state pages only
            for kind in STATE_KINDS:
                if self.counts.get(kind):
                    out[kind] = self.counts[kind] * (self.linear_state_bytes if kind == LINEAR else self.mamba_state_bytes)
            return out
        block = self.block_tokens()
        page = block * self.layer_token_bytes
        size = self.group_size()
        for kind, count in self.counts.items():
            if count:
                out[kind] = size * math.ceil(count / size) * _blocks(kind, length, cfg, self.in_flight, block) * page
        return out

    def sequence_bytes(self, length: int, cfg: ModelConfig) -> int:
        """KV bytes vLLM reserves for one sequence of ``length`` tokens."""
        return sum(self.kind_bytes(length, cfg).values())

    def max_length(self, budget: int, limit: int, cfg: ModelConfig) -> int:
        """The longest length (a multiple of 16, at most ``limit``) whose sequence fits."""
        low, high = 0, limit // BLOCK_TOKENS
        while low < high:
            mid = (low + high + 1) // 2
            if self.sequence_bytes(mid * BLOCK_TOKENS, cfg) <= budget:
                low = mid
            else:
                high = mid - 1
        return low * BLOCK_TOKENS


def kv_spec(cfg: ModelConfig, tp: int = 1, kv_dtype: str | None = None, hybrid: bool = True,
            in_flight: int = IN_FLIGHT_TOKENS) -> KvSpec | None:
    """What a sequence costs on one GPU. vLLM 0.32 turns its hybrid KV cache manager off for
    models with chunked local attention (Llama 4) unless VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE
    is set (vllm/config/vllm.py, ``__post_init__``): every layer then holds the whole context."""
    if not cfg.num_hidden_layers:
        return None
    counts = kind_counts(cfg)
    per_layer = layer_token_bytes(cfg, tp, kv_dtype) if attention_layers(counts) else 0
    if per_layer is None or (not per_layer and not any(counts[k] for k in STATE_KINDS)):
        return None
    # Prefix caching (so "align", 2 state pages) is on by default for hybrids, off for
    # attention-free models (vllm/config/model.py is_prefix_caching_supported): 1 page there.
    pages = STATE_PAGES if per_layer else 1
    return KvSpec(per_layer, counts, pages * linear_state_page_bytes(cfg, tp), hybrid and not counts[CHUNKED],
                  in_flight, pages * mamba_state_page_bytes(cfg, tp), 128 if cfg.is_mla else BLOCK_TOKENS)


def derived(cfg: ModelConfig, context: int | None) -> dict[str, Any]:
    """``inspect --json``'s ``derived``: what serving uses, at TP 1."""
    counts = kind_counts(cfg)
    spec = kv_spec(cfg)
    per_kind: dict[str, int] = {}
    per_token = None
    if spec and context:
        per_kind = {k: math.ceil(v / context) for k, v in spec.kind_bytes(context, cfg).items()}
        per_token = math.ceil(spec.sequence_bytes(context, cfg) / context)
    return {
        "head_dim": (cfg.kv_lora_rank + (cfg.qk_rope_head_dim or 0)) if cfg.is_mla else (
            cfg.effective_head_dim if attention_layers(counts) else 0),
        "num_key_value_heads": 1 if cfg.is_mla else (cfg.effective_kv_heads if attention_layers(counts) else 0),
        "num_hidden_layers": cfg.num_hidden_layers,
        "layers_by_kind": counts,
        "sliding_window": cfg.sliding_window if counts[SLIDING] else None,
        "use_mla": cfg.is_mla,
        "context_length": context,
        "kv_bytes_per_token": per_token,
        "kv_bytes_per_token_by_kind": per_kind,
        "kv_bytes_per_token_full_attention": spec.layer_token_bytes * attention_layers(counts) if spec else None,
        "mamba_state_bytes_per_sequence": spec.kind_bytes(context or BLOCK_TOKENS, cfg).get(MAMBA)
        if spec and counts[MAMBA] else None,
        "quant_method": cfg.quant_method,
        "quant_bits_per_weight": quant.bits_per_weight(cfg.quant_method, cfg.quantization),
        "defaults_used": cfg.defaults_used,
    }


def valid_state_tp(cfg: ModelConfig, tp: int) -> bool:
    """Whether vLLM can split the Mamba / linear-attention state over ``tp`` ranks: its
    ``divide`` asserts the conv dimension and the heads divide by TP (mamba_utils.py, 0.32.0)."""
    if cfg.mamba:
        shapes = mamba_state_shapes(cfg, 1)
        m = cfg.mamba
        dims = [shapes[0][1]] + ([m["num_heads"]] if m["version"] == 2 else [m["intermediate_size"]])
        if m["version"] == 2:
            groups = m["n_groups"] + _extra_groups(m["n_groups"], tp)
            dims[0] = m["intermediate_size"] + 2 * groups * m["state_size"]
        return all(d % tp == 0 for d in dims)
    shapes = linear_state_shapes(cfg, 1)
    if shapes:
        return shapes[0][1] % tp == 0 and shapes[1][0] % tp == 0
    return True
