"""Test-fixture builders: real-world-shaped model directories without real weights.

Every engineer's tests import these (``from builders import ...``; conftest puts tests/ on
sys.path). Weight files are sparse: the header is real and byte-exact, the data region is
made with ``truncate`` so a 15 GB Qwen2-7B costs a few KB of disk.

- ``write_safetensors(path, tensors, sparse=True, metadata=None)``
- configs as real ``config.json`` dicts: ``QWEN2_7B_INSTRUCT``, ``LLAMA3_8B_INSTRUCT``,
  ``MISTRAL_7B_V02``, ``YI_6B``, ``DEEPSEEK_V2_LITE``, ``TINY_LLAMA`` (a few KB of weights)
- ``llama_like_tensors(cfg)`` -> ``{name: (dtype, shape)}`` (Qwen2 gets q/k/v biases, MLA and
  MoE for DeepSeek-V2)
- ``make_safetensors_model(dir, cfg, shards=N)``, ``make_pytorch_model(dir, cfg, shards=N)``,
  ``make_gguf_model(dir, ...)``, ``make_hand_made_dir(root, ...)``, ``manage(dir, repo_id)``
"""

from __future__ import annotations

import copy
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

# safetensors dtype name -> bytes per element (safetensors/src/tensor.rs, Dtype::size).
ST_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
TORCH_TO_ST = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float8_e4m3fn": "F8_E4M3"}

# --------------------------------------------------------------------------- safetensors


def safetensors_header_bytes(tensors: dict[str, tuple[str, list[int] | tuple[int, ...]]],
                             metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """(8-byte length + padded JSON header, data bytes) for ``tensors`` in the given order."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * ST_DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # The reference writer (safetensors/src/tensor.rs, prepare) pads the header with spaces
    # so the data starts 8-byte aligned.
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path | str, tensors: dict[str, tuple[str, Any]], sparse: bool = True,
                      metadata: dict[str, str] | None = None) -> int:
    """Write a valid safetensors file; returns its size. Data is zeros (sparse by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head, data_bytes = safetensors_header_bytes(tensors, metadata)
    with open(path, "wb") as handle:
        handle.write(head)
        if sparse:
            handle.truncate(len(head) + data_bytes)
        else:
            remaining = data_bytes
            chunk = b"\0" * (1 << 20)
            while remaining:
                n = min(remaining, len(chunk))
                handle.write(chunk[:n])
                remaining -= n
    return len(head) + data_bytes


# --------------------------------------------------------------------------- real configs

QWEN2_7B_INSTRUCT: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
}
QWEN2_7B_INSTRUCT_PARAMETERS = 7_615_616_512

LLAMA3_8B_INSTRUCT: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}
LLAMA3_8B_INSTRUCT_PARAMETERS = 8_030_261_248

MISTRAL_7B_V02: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.36.0",
    "use_cache": True, "vocab_size": 32000,
}

YI_6B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 5000000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.34.0",
    "use_cache": True, "vocab_size": 64000,
}

DEEPSEEK_V2_LITE: dict[str, Any] = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV2Config",
        "AutoModel": "modeling_deepseek.DeepseekV2Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
    },
    "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "ep_size": 1,
    "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "pretraining_tp": 1, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": True,
    "v_head_dim": 128, "vocab_size": 102400,
}

# A tiny llama (a few hundred KB of weights) for tests that need small real files.
TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 64,
    "intermediate_size": 128, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 256, "bos_token_id": 1, "eos_token_id": 2,
}

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_TOKENIZER_CONFIG: dict[str, Any] = {
    "bos_token": None, "chat_template": QWEN_CHAT_TEMPLATE, "eos_token": "<|im_end|>",
    "model_max_length": 131072, "pad_token": "<|endoftext|>",
    "tokenizer_class": "Qwen2Tokenizer",
}


def config(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A deep copy of a config with overrides (``config(QWEN2_7B_INSTRUCT, num_hidden_layers=2)``)."""
    doc = copy.deepcopy(base)
    doc.update(overrides)
    return doc


# --------------------------------------------------------------------------- tensor lists


def llama_like_tensors(cfg: dict[str, Any], dtype: str | None = None) -> dict[str, tuple[str, list[int]]]:
    """The tensor list of a decoder-only checkpoint as transformers names it.

    Llama/Mistral/Yi/Qwen2 (q/k/v biases for ``qwen2``), and DeepSeek-V2 (MLA attention, MoE
    with shared experts after ``first_k_dense_replace`` dense layers).
    """
    dt = dtype or TORCH_TO_ST.get(cfg.get("torch_dtype") or "bfloat16", "BF16")
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    bias = cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias"))
    out: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": (dt, [vocab, h])}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (dt, [h])
        if cfg.get("kv_lora_rank"):
            nope, rope = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
            v_dim, rank = cfg["v_head_dim"], cfg["kv_lora_rank"]
            out[p + "self_attn.q_proj.weight"] = (dt, [heads * (nope + rope), h])
            out[p + "self_attn.kv_a_proj_with_mqa.weight"] = (dt, [rank + rope, h])
            out[p + "self_attn.kv_a_layernorm.weight"] = (dt, [rank])
            out[p + "self_attn.kv_b_proj.weight"] = (dt, [heads * (nope + v_dim), rank])
            out[p + "self_attn.o_proj.weight"] = (dt, [h, heads * v_dim])
        else:
            out[p + "self_attn.q_proj.weight"] = (dt, [heads * head_dim, h])
            if bias:
                out[p + "self_attn.q_proj.bias"] = (dt, [heads * head_dim])
            out[p + "self_attn.k_proj.weight"] = (dt, [kv_heads * head_dim, h])
            if bias:
                out[p + "self_attn.k_proj.bias"] = (dt, [kv_heads * head_dim])
            out[p + "self_attn.v_proj.weight"] = (dt, [kv_heads * head_dim, h])
            if bias:
                out[p + "self_attn.v_proj.bias"] = (dt, [kv_heads * head_dim])
            out[p + "self_attn.o_proj.weight"] = (dt, [h, heads * head_dim])
        moe = cfg.get("n_routed_experts") and i >= cfg.get("first_k_dense_replace", 0)
        if moe:
            mi = cfg["moe_intermediate_size"]
            for e in range(cfg["n_routed_experts"]):
                q = f"{p}mlp.experts.{e}."
                out[q + "gate_proj.weight"] = (dt, [mi, h])
                out[q + "up_proj.weight"] = (dt, [mi, h])
                out[q + "down_proj.weight"] = (dt, [h, mi])
            out[p + "mlp.gate.weight"] = (dt, [cfg["n_routed_experts"], h])
            si = mi * cfg.get("n_shared_experts", 0)
            if si:
                out[p + "mlp.shared_experts.gate_proj.weight"] = (dt, [si, h])
                out[p + "mlp.shared_experts.up_proj.weight"] = (dt, [si, h])
                out[p + "mlp.shared_experts.down_proj.weight"] = (dt, [h, si])
        else:
            out[p + "mlp.gate_proj.weight"] = (dt, [inter, h])
            out[p + "mlp.up_proj.weight"] = (dt, [inter, h])
            out[p + "mlp.down_proj.weight"] = (dt, [h, inter])
        out[p + "post_attention_layernorm.weight"] = (dt, [h])
    out["model.norm.weight"] = (dt, [h])
    if not cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = (dt, [vocab, h])
    return out


def count_parameters(tensors: dict[str, tuple[str, Any]]) -> int:
    return sum(math.prod(shape) for _, shape in tensors.values())


def tensor_bytes(tensors: dict[str, tuple[str, Any]]) -> int:
    return sum(math.prod(shape) * ST_DTYPE_BYTES[dt] for dt, shape in tensors.values())


def split_tensors(tensors: dict[str, tuple[str, Any]], shards: int) -> list[dict[str, tuple[str, Any]]]:
    """Split in order into ``shards`` groups of roughly equal bytes (as save_pretrained does)."""
    if shards <= 1:
        return [dict(tensors)]
    target = tensor_bytes(tensors) / shards
    groups: list[dict[str, tuple[str, Any]]] = [{}]
    current = 0
    for name, spec in tensors.items():
        size = math.prod(spec[1]) * ST_DTYPE_BYTES[spec[0]]
        if groups[-1] and current + size > target and len(groups) < shards:
            groups.append({})
            current = 0
        groups[-1][name] = spec
        current += size
    while len(groups) < shards:           # tiny models: make sure every shard exists
        biggest = max(range(len(groups)), key=lambda i: len(groups[i]))
        items = list(groups[biggest].items())
        if len(items) < 2:
            raise ValueError("not enough tensors for that many shards")
        half = len(items) // 2
        groups[biggest] = dict(items[:half])
        groups.insert(biggest + 1, dict(items[half:]))
    return groups


# --------------------------------------------------------------------------- model dirs


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _model_dir_with_configs(model_dir, cfg, tokenizer_config) -> tuple[Path, dict]:
    """The model directory, created, with its config.json (TINY_LLAMA by default) and tokenizer_config.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = TINY_LLAMA if cfg is None else cfg
    _write_json(model_dir / "config.json", cfg)
    if tokenizer_config is not None:
        _write_json(model_dir / "tokenizer_config.json", tokenizer_config)
    return model_dir, cfg


def make_safetensors_model(model_dir: Path | str, cfg: dict[str, Any] | None = None, shards: int = 1,
                           sparse: bool = True, tokenizer_config: dict[str, Any] | None = None,
                           tensors: dict[str, tuple[str, Any]] | None = None,
                           write_index: bool = True, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """config.json + ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` + index.

    The index's ``metadata.total_size`` is the real sum of tensor bytes (as transformers
    writes it). Returns the model directory.
    """
    model_dir, cfg = _model_dir_with_configs(model_dir, cfg, tokenizer_config)
    tensors = llama_like_tensors(cfg) if tensors is None else tensors
    _write_weights(model_dir, tensors, shards, "model", "safetensors", write_index,
                   lambda path, group: write_safetensors(path, group, sparse=sparse, metadata={"format": "pt"}))
    _extra(model_dir, extra_files)
    return model_dir


def _write_weights(model_dir: Path, tensors, shards: int, stem: str, ext: str, write_index: bool, write_one) -> None:
    """``<stem>.<ext>``, or ``<stem>-0000i-of-0000N.<ext>`` shards and their index (whose
    ``metadata.total_size`` is the real sum of tensor bytes, as transformers writes it)."""
    groups = split_tensors(tensors, shards)
    if len(groups) == 1:
        write_one(model_dir / f"{stem}.{ext}", groups[0])
        return
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
        write_one(model_dir / fname, group)
        weight_map.update({name: fname for name in group})
    if write_index:
        _write_json(model_dir / f"{stem}.{ext}.index.json",
                    {"metadata": {"total_size": tensor_bytes(tensors)}, "weight_map": weight_map})


def _extra(model_dir: Path, extra_files: dict[str, str | bytes] | None) -> None:
    for rel, content in (extra_files or {}).items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _fake_pickle_zip(path: Path, size: int, sparse: bool) -> None:
    """Bytes that look like torch.save's zip (local file header magic); never a real pickle."""
    head = b"PK\x03\x04" + b"\x14\x00\x00\x00\x00\x00" + b"archive/data.pkl" + b"\x80\x02}q\x00."
    with open(path, "wb") as handle:
        handle.write(head)
        if sparse:
            handle.truncate(max(size, len(head)))
        else:
            handle.write(b"\0" * max(0, size - len(head)))


def make_pytorch_model(model_dir: Path | str, cfg: dict[str, Any] | None = None, shards: int = 1,
                       sparse: bool = True, tokenizer_config: dict[str, Any] | None = None,
                       write_index: bool = True, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """config.json + ``pytorch_model.bin`` or ``pytorch_model-0000i-of-0000N.bin`` + index.

    The .bin files are zip-looking bytes of the right size: vmm must never unpickle them.
    """
    model_dir, cfg = _model_dir_with_configs(model_dir, cfg, tokenizer_config)
    tensors = llama_like_tensors(cfg)
    _write_weights(model_dir, tensors, shards, "pytorch_model", "bin", write_index,
                   lambda path, group: _fake_pickle_zip(path, tensor_bytes(group), sparse))
    _extra(model_dir, extra_files)
    return model_dir


# GGUF quant name -> (general.file_type, ggml tensor type name) (gguf-py constants.py,
# LlamaFileType / GGMLQuantizationType, gguf 0.19).
GGUF_QUANTS = {
    "F32": (0, "F32"), "F16": (1, "F16"), "BF16": (32, "BF16"), "Q4_0": (2, "Q4_0"),
    "Q8_0": (7, "Q8_0"), "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"),
    "Q5_K_M": (17, "Q5_K"), "Q6_K": (18, "Q6_K"), "Q2_K": (10, "Q2_K"),
}

GGUF_LLAMA_METADATA: dict[str, Any] = {
    "context_length": 4096, "embedding_length": 256, "block_count": 2, "head_count": 8,
    "head_count_kv": 2, "feed_forward_length": 512,
}


def make_gguf_model(model_dir: Path | str, arch: str = "llama", quant: str = "Q4_K_M",
                    basename: str = "model", split: int = 1, chat_template: str | None = None,
                    metadata: dict[str, Any] | None = None, vocab: int = 32, bos_id: int | None = 1,
                    eos_id: int | None = 2, file_type_in_metadata: bool = True,
                    filename: str | None = None, name: str | None = None,
                    extra_kv: dict[str, Any] | None = None) -> Path:
    """Write ``<basename>-<quant>.gguf`` (or ``...-0000i-of-0000N.gguf`` parts) with real metadata.

    ``metadata`` keys are architecture keys without the ``{arch}.`` prefix (``context_length``,
    ``embedding_length``, ``block_count``, ``head_count``, ``head_count_kv``, ``rope.scaling.type``,
    ``attention.sliding_window``...); the plain names ``head_count``/``head_count_kv`` map to
    ``attention.head_count``/``attention.head_count_kv``. Tensors are small (a few KB) and
    typed after the quantization. Returns the path of the single file or the first part.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    meta = {**GGUF_LLAMA_METADATA, **(metadata or {})}
    file_type, ggml_name = GGUF_QUANTS.get(quant.upper(), (15, "Q4_K"))
    fname = filename or f"{basename}-{quant}.gguf"
    writer = GGUFWriter(model_dir / fname, arch, split_max_tensors=(1 if split > 1 else 0))
    if name:
        writer.add_name(name)
    if file_type_in_metadata:
        writer.add_file_type(file_type)
    aliases = {"head_count": "attention.head_count", "head_count_kv": "attention.head_count_kv",
               "key_length": "attention.key_length", "value_length": "attention.value_length",
               "sliding_window": "attention.sliding_window"}
    for key, value in meta.items():
        full = f"{arch}.{aliases.get(key, key)}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            writer.add_uint32(full, value) if value < 2**32 else writer.add_uint64(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_string(full, str(value))
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(vocab)])
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    if eos_id is not None:
        writer.add_eos_token_id(eos_id)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_key_value(key, value, GGUFValueType.FLOAT32)
    # At least ``split`` tensors, so the writer makes ``split`` parts (one tensor per part).
    n_tensors = split if split > 1 else 3
    qtype = GGMLQuantizationType[ggml_name]
    block, type_size = GGML_QUANT_SIZES[qtype]
    for i in range(n_tensors):
        tname = f"blk.{i}.attn_q.weight" if i else "token_embd.weight"
        if qtype in (GGMLQuantizationType.F32,):
            writer.add_tensor(tname, np.zeros((4, 256), dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(tname, np.zeros((4, 256), dtype=np.float16))
        else:
            data = np.zeros((4, 256 // block * type_size), dtype=np.uint8)
            writer.add_tensor(tname, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split > 1:
        from gguf.gguf_writer import SHARD_NAME_FORMAT  # "{:s}-{:05d}-of-{:05d}.gguf"

        stem = Path(fname).stem
        return model_dir / SHARD_NAME_FORMAT.format(stem, 1, n_tensors)
    return model_dir / fname


def make_hand_made_dir(root: Path | str, dir_name: str = "my-finetune", cfg: dict[str, Any] | None = None,
                       **kwargs: Any) -> Path:
    """A directory put in the root by hand: config + safetensors, no vmm manifest."""
    return make_safetensors_model(Path(root) / dir_name, cfg or TINY_LLAMA, **kwargs)


def manage(model_dir: Path | str, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567",
           revision: str = "main", last_used: float | None = None, quant: str | None = None,
           hashes: bool = False, pulled_at: float | None = None, pinned: bool = False) -> Path:
    """Give a model directory a vmm manifest listing its files (as `vmm pull` would); with
    ``hashes`` each file's sha256 and git blob sha1 too (real content only: sparse files of
    many GB would take minutes to hash)."""
    from vmm.core import hashing
    from vmm.core.store import manifests

    model_dir = Path(model_dir)
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_file() and not rel.startswith(".vmm/"):
            sha256, sha1 = (hashing.file_hashes(path)[:2]) if hashes else (None, None)
            files.append(manifests.ManifestFile(path=rel, size=path.stat().st_size, sha256=sha256, git_sha1=sha1))
    manifests.write_manifest(model_dir, manifests.Manifest(
        repo_id=repo_id, revision=revision, commit=commit, quant=quant, files=files,
        pulled_at=time.time() if pulled_at is None else pulled_at, last_used=last_used, pinned=pinned))
    return model_dir


def make_model(root: Path | str, repo_id: str, kind: str = "safetensors", managed: bool = True,
               **kwargs: Any) -> Path:
    """One call: ``make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=QWEN2_7B_INSTRUCT, shards=4)``.

    ``kind`` is ``safetensors``, ``pytorch`` or ``gguf``; the directory is ``org--name``.
    """
    model_dir = Path(root) / repo_id.replace("/", "--")
    if kind == "safetensors":
        make_safetensors_model(model_dir, **kwargs)
    elif kind == "pytorch":
        make_pytorch_model(model_dir, **kwargs)
    elif kind == "gguf":
        make_gguf_model(model_dir, **kwargs)
    else:
        raise ValueError(kind)
    if managed:
        manage(model_dir, repo_id, quant=kwargs.get("quant") if kind == "gguf" else None)
    return model_dir


def make_demo_root(root: Path | str) -> Path:
    """The root of the README's tour: every format, sparse (a few MB on disk for ~38 GB)."""
    root = Path(root)
    qwen_gguf_meta = {"context_length": 32768, "embedding_length": 3584, "block_count": 28,
                      "head_count": 28, "head_count_kv": 4}
    make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=QWEN2_7B_INSTRUCT, shards=4,
               tokenizer_config=QWEN2_TOKENIZER_CONFIG)
    make_model(root, "meta-llama/Meta-Llama-3-8B-Instruct", kind="pytorch", cfg=LLAMA3_8B_INSTRUCT, shards=4)
    gguf_dir = root / "Qwen--Qwen2-7B-Instruct-GGUF"
    for quant in ("Q4_K_M", "Q8_0"):
        make_gguf_model(gguf_dir, arch="qwen2", quant=quant, basename="qwen2-7b-instruct",
                        metadata=qwen_gguf_meta)
    hand = make_hand_made_dir(root, "my-finetune", cfg=MISTRAL_7B_V02, shards=3)
    (hand / "model-00002-of-00003.safetensors").unlink()        # a broken index, on purpose
    return root


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "demo":
        sys.exit("usage: python tests/builders.py demo ROOT")
    print(make_demo_root(sys.argv[2]))
