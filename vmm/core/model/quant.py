"""Quantization of a checkpoint: the method vLLM will pick and the bytes a weight takes.

Sources, as vLLM 0.32.0 reads them: config.json ``quantization_config.quant_method``
(vllm/config/model.py ``_verify_quantization``), ModelOpt's ``hf_quant_config.json``
(``quantization.quant_algo``: FP8, NVFP4, ...; vllm/model_executor/layers/quantization/modelopt.py
``get_config_filenames``). Weight bytes come from the safetensors headers whenever they are
there (they hold the packed tensors and scales, so they are exact); ``bits_per_weight`` is the
estimate used only when a size must be guessed without headers.
"""

from __future__ import annotations

from typing import Any

# Approximate storage per weight including scales (groups of 128 for AWQ/GPTQ, 32-value
# blocks with an 8-bit scale for MXFP4, 16-value blocks with an FP8 scale for NVFP4).
BITS_PER_WEIGHT = {
    "fp8": 8.0, "modelopt": 8.0, "fbgemm_fp8": 8.0, "mxfp4": 4.25, "modelopt_fp4": 4.5,
    "awq": 4.25, "awq_marlin": 4.25, "gptq": 4.25, "gptq_marlin": 4.25,
    "bitsandbytes": 4.5, "compressed-tensors": 8.0,
}


def _bits(quant: dict[str, Any]) -> int | None:
    for key in ("bits", "w_bit", "num_bits"):
        value = quant.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def method(quant: dict[str, Any] | None, hf_quant: dict[str, Any] | None = None) -> str | None:
    """The quantization method name, lower case (None: unquantized)."""
    if isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
        name = quant["quant_method"].lower()
        if name == "bitsandbytes" or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
            return "bitsandbytes"
        return name
    if isinstance(hf_quant, dict):
        algo = (hf_quant.get("quantization") or {}).get("quant_algo") if isinstance(
            hf_quant.get("quantization"), dict) else None
        if isinstance(algo, str):
            return "modelopt_fp4" if "FP4" in algo.upper() else "modelopt"
    return None


def as_quantization_config(hf_quant: dict[str, Any] | None) -> dict[str, Any] | None:
    """hf_quant_config.json's ``quantization`` section, as a quantization_config."""
    if not isinstance(hf_quant, dict) or not isinstance(hf_quant.get("quantization"), dict):
        return None
    section = dict(hf_quant["quantization"])
    section.setdefault("quant_method", "modelopt")
    section["source"] = "hf_quant_config.json"
    return section


def bits_per_weight(name: str | None, quant: dict[str, Any] | None = None) -> float | None:
    """Estimated storage bits per quantized weight (None: unknown or unquantized)."""
    if not name:
        return None
    if quant:
        if name == "bitsandbytes":
            return 8.0 if quant.get("load_in_8bit") else 4.5
        bits = _bits(quant)
        if bits is None and isinstance(quant.get("config_groups"), dict):
            for group in quant["config_groups"].values():
                weights = group.get("weights") if isinstance(group, dict) else None
                if isinstance(weights, dict) and isinstance(weights.get("num_bits"), int):
                    bits = weights["num_bits"]
                    break
        if bits is not None:
            return float(bits) + (0.25 if bits < 8 else 0.0)
    return BITS_PER_WEIGHT.get(name)


# Methods vLLM applies at load time to an unquantized checkpoint (vLLM 0.33 docs,
# features/quantization: "online" dynamic quantization); every other method needs a
# checkpoint already in that format.
ONLINE = ("fp8", "experts_int8", "ptpc_fp8")


def online_weight_bytes(weight_bytes: int, method_name: str | None, checkpoint_method: str | None,
                        dtype_bits: float, is_moe: bool) -> int:
    """What an unquantized checkpoint weighs on the GPU once vLLM quantizes it at load time.

    fp8 / ptpc_fp8 store the linear layers in 8 bits (``Fp8LinearMethod``; embeddings and the
    LM head stay at the checkpoint dtype, so this slightly undercounts a small model);
    experts_int8 quantizes only the MoE experts, which hold nearly all of an MoE model's
    weights (dense models: unchanged). An estimate, stated as such in the plan's notes.
    """
    if checkpoint_method or not method_name or method_name.lower() not in ONLINE or dtype_bits <= 8:
        return weight_bytes
    if method_name.lower() == "experts_int8" and not is_moe:
        return weight_bytes
    return int(weight_bytes * 8 / dtype_bits)
