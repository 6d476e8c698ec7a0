#!/usr/bin/env python3
"""Generate vmm/data/transformers_defaults.json from transformers' config classes.

vLLM reads config.json through transformers, so a field absent from a
checkpoint's config.json takes the default of the transformers config class
(e.g. Gemma3TextConfig.max_position_embeddings == 131072).  This script records
those class defaults for every model_type in ``transformers.CONFIG_MAPPING``.

Run it in a throwaway venv that has transformers (torch is not needed):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install -q 'transformers>=4.56'
    /tmp/tfvenv/bin/python scripts/gen_config_defaults.py

The committed vmm/data/transformers_defaults.json was generated with
transformers 5.24.0 (the version is also stored in the JSON itself).

Each config class is instantiated with no arguments; classes that fail are
skipped (and listed on stderr).  For composite configs that carry a
``text_config`` sub-config (gemma3, llama4, mistral3, qwen2_5_vl, ...), the
text sub-config's defaults are recorded under a nested "text_config" key.
Only JSON-serialisable values are kept (tuples become lists).

Each entry also records the class's ``attribute_map`` (standard name -> the name the class
stores it under, e.g. GPT2Config ``hidden_size -> n_embd``) when it has one:
``PretrainedConfig.__getattribute__`` / ``__setattr__`` (transformers 5.24
configuration_utils.py) redirect those names, so vmm applies the same map to config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

KEYS = [
    "max_position_embeddings",
    "head_dim",
    "num_key_value_heads",
    "num_attention_heads",
    "hidden_size",
    "num_hidden_layers",
    "sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "rope_scaling",
    "rope_theta",
    "max_window_layers",
    "use_sliding_window",
    "attention_chunk_size",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "vocab_size",
    "tie_word_embeddings",
    "torch_dtype",
    "dtype",
    # transformers >= 5 moved rope_theta/rope_scaling into rope_parameters
    "rope_parameters",
    # multi-query / grouped KV fields vLLM's get_total_num_kv_heads reads (Falcon, ChatGLM)
    "multi_query",
    "new_decoder_architecture",
    "num_kv_heads",
    "multi_query_group_num",
    # Mamba / hybrid state sizes (vLLM's get_mamba_state_shape_from_config of each model)
    "mamba_d_state",
    "mamba_d_conv",
    "mamba_expand",
    "mamba_n_heads",
    "mamba_d_head",
    "mamba_n_groups",
    "mamba_d_ssm",
    "mamba_num_heads",
    "mamba_head_dim",
    "ssm_state_size",
    "n_groups",
    "conv_kernel",
    "expand",
    "state_size",
    "intermediate_size",
    "mamba_ngroups",
    "n_mamba_heads",
    "mamba_headdim",
    "attn_layer_period",
    "attn_layer_offset",
]

_MISSING = object()


def _jsonable(value):
    """Return a JSON-serialisable copy of value, or _MISSING if impossible."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            conv = _jsonable(item)
            if conv is _MISSING:
                return _MISSING
            out.append(conv)
        return out
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            conv = _jsonable(v)
            if conv is _MISSING:
                return _MISSING
            out[str(k)] = conv
        return out
    # torch.dtype and similar objects: keep their plain string form only if it
    # looks like a dtype name (e.g. "torch.bfloat16" -> "bfloat16").
    text = str(value)
    if text.startswith("torch."):
        return text[len("torch."):]
    return _MISSING


def _attr(cfg, key):
    # Avoid attribute_map indirection surprises: only report what the
    # instance exposes.
    try:
        value = getattr(cfg, key)
    except Exception:  # noqa: BLE001 - some properties raise on bare configs
        return _MISSING
    return _jsonable(value)


def _attribute_map(cfg) -> dict:
    """The class's alias map (standard name -> stored name), strings only."""
    found = getattr(type(cfg), "attribute_map", None) or {}
    return {str(k): str(v) for k, v in found.items() if isinstance(k, str) and isinstance(v, str) and k != v}


def _collect(cfg) -> dict:
    out = {}
    aliases = _attribute_map(cfg)
    if aliases:
        out["attribute_map"] = aliases
    for key in KEYS:
        if not hasattr(type(cfg), key) and key not in cfg.__dict__ and key not in getattr(cfg, "attribute_map", {}):
            continue
        value = _attr(cfg, key)
        if value is _MISSING:
            continue
        out[key] = value
    return out


def _text_sub_config(cfg):
    """The text sub-config instance of a composite config, if any."""
    sub_configs = getattr(type(cfg), "sub_configs", None) or {}
    if "text_config" not in sub_configs and "text_config" not in cfg.__dict__:
        return None
    sub = getattr(cfg, "text_config", None)
    if sub is None:
        # Instantiate the declared sub-config class with no arguments.
        cls = sub_configs.get("text_config")
        if cls is None:
            return None
        try:
            sub = cls()
        except Exception:  # noqa: BLE001
            return None
    if isinstance(sub, dict):
        return None
    return sub


def generate() -> dict:
    import transformers
    from transformers import CONFIG_MAPPING

    model_types = {}
    skipped = []
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            cls = CONFIG_MAPPING[model_type]
            cfg = cls()
        except Exception as exc:  # noqa: BLE001
            skipped.append(f"{model_type}: {type(exc).__name__}: {exc}".splitlines()[0])
            continue
        entry = _collect(cfg)
        try:
            sub = _text_sub_config(cfg)
        except Exception:  # noqa: BLE001
            sub = None
        if sub is not None:
            entry["text_config"] = _collect(sub)
            sub_type = getattr(sub, "model_type", None)
            if isinstance(sub_type, str):
                entry["text_config"]["model_type"] = sub_type
        model_types[model_type] = entry

    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return {
        "transformers_version": transformers.__version__,
        "generated_by": "scripts/gen_config_defaults.py",
        "model_types": model_types,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent.parent / "vmm" / "data" / "transformers_defaults.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    data = generate()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")

    mt = data["model_types"]
    print(f"transformers {data['transformers_version']}: {len(mt)} model types -> {args.out}")
    for name in ("gemma3_text", "gemma3", "llama", "qwen3", "gpt_oss", "deepseek_v3", "mistral3", "llama4"):
        e = mt.get(name)
        if e is None:
            print(f"  {name}: (absent)")
            continue
        mpe = e.get("max_position_embeddings", e.get("text_config", {}).get("max_position_embeddings"))
        print(f"  {name}: max_position_embeddings={mpe} head_dim={e.get('head_dim')}"
              f"{' text_config' if 'text_config' in e else ''}")
    g = mt.get("gemma3_text", {}).get("max_position_embeddings")
    if g != 131072:
        print(f"WARNING: gemma3_text max_position_embeddings is {g}, expected 131072", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
