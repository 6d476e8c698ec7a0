"""Model configuration: the fields serving needs, from config.json or GGUF metadata.

``get_model_config(path) -> dict`` is the SPEC.md core function; ``read_model_config`` returns
the dataclass the rest of vmm uses. Multimodal configs nest the language model under
``text_config`` (Llava, Qwen2-VL, Gemma 3, ...): its fields win over the top level's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError, NotFoundError

DTYPE_BYTES: dict[str, float] = {
    "float32": 4, "float": 4, "fp32": 4,
    "bfloat16": 2, "float16": 2, "half": 2, "fp16": 2, "bf16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1,
    "int8": 1, "uint8": 1,
}

# Keys vLLM consults for the maximum length (vllm/config/model.py, _get_and_verify_max_len).
MAX_LEN_KEYS = (
    "max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
    "max_sequence_length", "max_seq_length", "seq_len", "model_max_length",
)

CONTRACT_FIELDS = (
    "model_type", "architectures", "max_position_embeddings", "model_max_length",
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "torch_dtype", "rope_scaling", "sliding_window",
    "quantization",
)


@dataclass
class ModelConfig:
    model_type: str | None = None
    architectures: list[str] = field(default_factory=list)
    max_position_embeddings: int | None = None
    model_max_length: int | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    torch_dtype: str | None = None
    rope_scaling: dict[str, Any] | None = None
    sliding_window: int | None = None
    quantization: dict[str, Any] | None = None
    # Beyond the contract: what the planner, compat and templates need.
    intermediate_size: int | None = None
    kv_lora_rank: int | None = None          # MLA (DeepSeek V2/V3)
    qk_rope_head_dim: int | None = None      # MLA
    auto_map: dict[str, Any] | None = None   # custom code: needs --trust-remote-code
    tie_word_embeddings: bool | None = None
    derived_max_len: int | None = None       # the key from MAX_LEN_KEYS that vLLM would take
    source: str = "config.json"              # or the GGUF file name

    @property
    def effective_head_dim(self) -> int | None:
        if self.head_dim:
            return self.head_dim
        if self.hidden_size and self.num_attention_heads:
            return self.hidden_size // self.num_attention_heads
        return None

    @property
    def effective_kv_heads(self) -> int | None:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def is_mla(self) -> bool:
        return bool(self.kv_lora_rank)

    def contract_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        return {k: doc[k] for k in CONTRACT_FIELDS}


def dtype_bytes(dtype: str | None, default: float = 2) -> float:
    if not dtype:
        return default
    return DTYPE_BYTES.get(str(dtype).lower().removeprefix("torch."), default)


def kv_cache_bytes_per_token(cfg: ModelConfig, tp: int = 1, kv_dtype: str | None = None) -> int | None:
    """KV-cache bytes one token costs on one GPU at tensor-parallel size ``tp``.

    Standard attention: 2 (K and V) x layers x max(1, kv_heads // tp) x head_dim x dtype bytes.
    MLA (DeepSeek V2/V3): (kv_lora_rank + qk_rope_head_dim) x layers x dtype bytes, not split
    by TP (vLLM's MLA cache is replicated). Source: vLLM 0.33 cache spec / FIELD-NOTES.md.
    """
    layers = cfg.num_hidden_layers
    if not layers:
        return None
    nbytes = dtype_bytes(kv_dtype or cfg.torch_dtype)
    if cfg.is_mla:
        return int(layers * (cfg.kv_lora_rank + (cfg.qk_rope_head_dim or 0)) * nbytes)
    kv_heads, head_dim = cfg.effective_kv_heads, cfg.effective_head_dim
    if not kv_heads or not head_dim:
        return None
    return int(2 * layers * max(1, kv_heads // tp) * head_dim * nbytes)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_config_dict(doc: dict[str, Any], tokenizer_config: dict[str, Any] | None = None,
                     source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a parsed config.json (and tokenizer_config.json)."""
    text = doc.get("text_config") if isinstance(doc.get("text_config"), dict) else {}
    merged = {**doc, **{k: v for k, v in text.items() if v is not None}}
    archs = doc.get("architectures") or text.get("architectures") or []
    if not isinstance(archs, list):
        archs = [str(archs)]
    max_len_key = next((k for k in MAX_LEN_KEYS[:-1] if _int(merged.get(k))), None)
    model_max_length = _int((tokenizer_config or {}).get("model_max_length"))
    # Tokenizers without a limit store 1e30 (transformers VERY_LARGE_INTEGER): not a limit.
    if model_max_length is not None and model_max_length > 1 << 40:
        model_max_length = None
    quant = merged.get("quantization_config")
    if not isinstance(quant, dict):
        quant = None
    rope = merged.get("rope_scaling")
    if not isinstance(rope, dict):
        rope = None
    return ModelConfig(
        model_type=doc.get("model_type") if isinstance(doc.get("model_type"), str) else None,
        architectures=[str(a) for a in archs],
        max_position_embeddings=_int(merged.get(max_len_key)) if max_len_key else None,
        model_max_length=model_max_length or _int(merged.get("model_max_length")),
        vocab_size=_int(merged.get("vocab_size")),
        hidden_size=_int(merged.get("hidden_size")) or _int(merged.get("n_embd")) or _int(merged.get("d_model")),
        num_hidden_layers=_int(merged.get("num_hidden_layers")) or _int(merged.get("n_layer")) or _int(merged.get("num_layers")),
        num_attention_heads=_int(merged.get("num_attention_heads")) or _int(merged.get("n_head")),
        num_key_value_heads=_int(merged.get("num_key_value_heads")) or _int(merged.get("multi_query_group_num")),
        head_dim=_int(merged.get("head_dim")),
        torch_dtype=(merged.get("torch_dtype") or merged.get("dtype")) if isinstance(merged.get("torch_dtype") or merged.get("dtype"), str) else None,
        rope_scaling=rope,
        # Qwen2 configs carry sliding_window with use_sliding_window false: transformers'
        # Qwen2Config (4.45+) then sets sliding_window to None, which is what vLLM sees.
        sliding_window=None if merged.get("use_sliding_window") is False else _int(merged.get("sliding_window")),
        quantization=quant,
        intermediate_size=_int(merged.get("intermediate_size")),
        kv_lora_rank=_int(merged.get("kv_lora_rank")),
        qk_rope_head_dim=_int(merged.get("qk_rope_head_dim")),
        auto_map=doc.get("auto_map") if isinstance(doc.get("auto_map"), dict) else None,
        tie_word_embeddings=merged.get("tie_word_embeddings") if isinstance(merged.get("tie_word_embeddings"), bool) else None,
        derived_max_len=max_len_key,
        source=source,
    )


def load_json_file(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; malformed or nested too deep (:mod:`vmm.core.jsonfile`) is an
    integrity error naming the file."""
    doc = jsonfile.load_file(path)
    if not isinstance(doc, dict):
        raise IntegrityError("malformed JSON (not an object)", str(path),
                             "re-download it with `vmm pull`, or fix the file")
    return doc


def read_model_config(model_path: Path) -> ModelConfig:
    """config.json when present, else the GGUF metadata; exit 3 when neither exists."""
    config_file = model_path / "config.json"
    tok_file = model_path / "tokenizer_config.json"
    if config_file.is_file():
        tok = None
        if tok_file.is_file():
            try:
                tok = load_json_file(tok_file)
            except IntegrityError:
                tok = None
        return from_config_dict(load_json_file(config_file), tok)
    from vmm.core.model import formats

    gguf = formats.find_gguf_files(model_path)
    if gguf:
        return config_from_gguf(gguf[0].path)
    raise NotFoundError("no config.json or GGUF file", str(model_path),
                        "is this a model directory? `vmm pull` it again")


def get_model_config(model_path: Path) -> dict[str, Any]:
    """SPEC.md's core function: the config fields as a plain dict."""
    return dataclasses.asdict(read_model_config(Path(model_path)))


# --------------------------------------------------------------------------- GGUF metadata

def _first_int(value: Any) -> int | None:
    """Per-layer arrays (head counts of some architectures) give their largest value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return None


def _dtype_of(quant: str | None) -> str:
    # vLLM runs GGUF checkpoints in float16 unless they are BF16/F32 files
    # (vllm/model_executor/layers/quantization/gguf.py: supported act dtypes).
    return {"F32": "float32", "BF16": "bfloat16"}.get(quant or "", "float16")


def config_from_info(info) -> ModelConfig:
    """The ModelConfig of a parsed GGUF header (gguf_meta.GgufInfo)."""
    from vmm.core.model.gguf_meta import GGUF_ARCHITECTURES, GgufArray, quant_from_file_type

    arch = info.architecture
    if not arch:
        raise IntegrityError("GGUF file without general.architecture", str(info.path),
                             "is this the first part of a split GGUF? re-download it")
    hf_arch, model_type = GGUF_ARCHITECTURES.get(arch, (None, arch))
    quant = quant_from_file_type(info.metadata.get("general.file_type"))
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    vocab = _first_int(info.arch_value("vocab_size"))
    if vocab is None and isinstance(tokens, (list, GgufArray)):
        vocab = len(tokens) if isinstance(tokens, list) else tokens.count
    rope = None
    rope_type = info.arch_value("rope.scaling.type")
    if isinstance(rope_type, str) and rope_type != "none":
        rope = {"rope_type": rope_type, "type": rope_type}
        factor = info.arch_value("rope.scaling.factor")
        if isinstance(factor, (int, float)):
            rope["factor"] = float(factor)
        orig = _first_int(info.arch_value("rope.scaling.original_context_length"))
        if orig:
            rope["original_max_position_embeddings"] = orig
    kv_lora = _first_int(info.arch_value("attention.kv_lora_rank"))
    quantization: dict[str, Any] = {"quant_method": "gguf"}
    if quant:
        quantization["file_type"] = quant
    return ModelConfig(
        model_type=model_type,
        architectures=[hf_arch] if hf_arch else [],
        max_position_embeddings=_first_int(info.arch_value("context_length")),
        model_max_length=None,
        vocab_size=vocab,
        hidden_size=_first_int(info.arch_value("embedding_length")),
        num_hidden_layers=_first_int(info.arch_value("block_count")),
        num_attention_heads=_first_int(info.arch_value("attention.head_count")),
        num_key_value_heads=_first_int(info.arch_value("attention.head_count_kv")),
        head_dim=None if kv_lora else _first_int(info.arch_value("attention.key_length")),
        torch_dtype=_dtype_of(quant),
        rope_scaling=rope,
        sliding_window=_first_int(info.arch_value("attention.sliding_window")),
        quantization=quantization,
        intermediate_size=_first_int(info.arch_value("feed_forward_length")),
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=_first_int(info.arch_value("rope.dimension_count")) if kv_lora else None,
        derived_max_len="context_length" if info.arch_value("context_length") is not None else None,
        source=info.path.name,
    )


def config_from_gguf(path: Path | str) -> ModelConfig:
    """The ModelConfig a GGUF file's metadata describes (first part of a split file)."""
    from vmm.core.model.gguf_meta import read_gguf

    return config_from_info(read_gguf(path, tensors=False))
