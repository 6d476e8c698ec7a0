"""Speculative decoding: ``--speculative mtp[:N] | eagle3:REPO[:N] | auto | none``.

- ``mtp``: the checkpoint's own multi-token-prediction layers. Which configs have them is vLLM's
  ``SpeculativeConfig.hf_config_override`` (``vllm/config/speculative.py``, 0.32.0 and 0.34.0):
  ``num_nextn_predict_layers`` (DeepSeek V3/R1/V3.1/V3.2, GLM-4.5/4.6/4.7 and GLM-4.7-Flash,
  MiMo, ERNIE 4.5 MoE, Qwen3-Next, LongCat, ...) or ``mtp_num_hidden_layers`` (Qwen3.5 /
  Qwen3.6, in the text config). The method name vLLM takes is ``"mtp"``: 0.32.0 and 0.34.0
  both log "method `X` is deprecated and replaced with mtp" for the per-architecture names
  (``deepseek_mtp``, ``qwen3_next_mtp``, ...) in ``MTPModelTypes``, which is what the vLLM
  recipes type too (``models/Qwen/Qwen3.5-27B.yaml``: ``{"method":"mtp","num_speculative_tokens":1}``).
  For a target vLLM older than 0.32 (not checked here) vmm writes the per-architecture name,
  which those versions and 0.32/0.34 all accept.
- ``eagle3:REPO``: an EAGLE-3 draft head (e.g. ``nvidia/gpt-oss-120b-Eagle3-v3``, the recipe for
  gpt-oss-120b, ``models/openai/gpt-oss-120b.yaml``) with ``draft_tensor_parallel_size`` 1 as
  that recipe writes it.
- ``auto``: MTP where the checkpoint has MTP layers *and* a vLLM recipe turns it on by default
  (none does at recipes commit 8959cf6: every recipe lists speculative decoding under
  ``opt_in_features``), else nothing; so ``auto`` is the default and means "off" today.

Memory: MTP layers are in the checkpoint (their weights are already in the weight bytes) and
each adds one attention layer to the KV cache; an EAGLE-3 head is one decoder layer plus its
own LM head, estimated from the target's shapes (its files are not read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmm.core.errors import IncompatibleError, UsageError
from vmm.core.serving import vllm_env

# model_type -> the per-architecture method name (vllm/config/speculative.py MTPModelTypes, 0.32.0)
_LEGACY_MTP = {"deepseek_v3": "deepseek_mtp", "deepseek_v32": "deepseek_mtp", "kimi_k2": "deepseek_mtp",
               "qwen3_next": "qwen3_next_mtp", "glm4_moe": "glm4_moe_mtp", "glm4_moe_lite": "glm4_moe_lite_mtp",
               "mimo": "mimo_mtp", "ernie4_5_moe": "ernie_mtp", "qwen3_5": "qwen3_5_mtp",
               "qwen3_5_moe": "qwen3_5_mtp", "longcat_flash": "longcat_flash_mtp"}
# Recipes (vllm-project/recipes @ 8959cf6) that make speculative decoding a default: none.
RECIPE_DEFAULT_MTP: frozenset[str] = frozenset()
MTP_VERSION = (0, 32)    # "mtp" checked in 0.32.0 and 0.34.0


@dataclass(frozen=True)
class Speculative:
    method: str                      # "mtp" (or a legacy per-architecture name), "eagle3"
    num_speculative_tokens: int
    model: str | None = None         # the draft's repo (eagle3)
    extra_kv_layers: int = 0         # attention layers the draft adds to the KV cache
    draft_weight_bytes: int = 0      # weights the draft adds (eagle3; MTP's are in the checkpoint)

    def config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
        if self.model:
            doc = {"model": self.model, **doc, "draft_tensor_parallel_size": 1}
        return doc

    def argv(self) -> list[str]:
        return ["--speculative-config", json.dumps(self.config(), separators=(",", ":"))]


# model_types vLLM maps to an MTP draft even when config.json lacks the layer count
# (vllm/config/speculative.py 0.32.0: qwen3_next -> qwen3_next_mtp; Qwen3-Next checkpoints ship
# one MTP layer, ``mtp.*`` tensors, and their config.json has no num_nextn_predict_layers).
_IMPLIED_MTP = {"qwen3_next": 1}


def mtp_layers(merged: dict[str, Any] | None, model_type: str | None = None) -> int:
    """MTP layers the checkpoint ships (0: none)."""
    for key in ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_modules"):
        value = (merged or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return _IMPLIED_MTP.get(model_type or "", 0)


def _count(text: str, flag_value: str) -> int:
    if not text.isdigit() or int(text) < 1 or int(text) > 16:
        raise UsageError("bad --speculative token count", repr(flag_value), "use 1 to 16, e.g. mtp:2")
    return int(text)


def resolve(value: str | None, merged: dict[str, Any] | None, model_type: str | None,
            vllm_version: str | None, hidden_size: int | None = None, vocab_size: int | None = None,
            dtype_bytes: float = 2) -> Speculative | None:
    """What ``--speculative VALUE`` means for this checkpoint and target vLLM (None: off).
    Exit 2 on a malformed value, 6 for ``mtp`` on a checkpoint without MTP layers."""
    text = (value or "auto").strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    layers = mtp_layers(merged, model_type)
    if kind == "none":
        return None
    if kind == "auto":
        if rest:
            raise UsageError("bad --speculative", repr(value), "auto takes no arguments")
        if layers and (model_type or "") in RECIPE_DEFAULT_MTP:
            kind = "mtp"
        else:
            return None
    if kind == "mtp":
        if not layers:
            raise IncompatibleError("the checkpoint has no MTP layers", "--speculative mtp",
                                    "use --speculative eagle3:REPO with a draft model, or none")
        tokens = _count(rest, value) if rest else layers
        method = "mtp"
        if vllm_version and vllm_env.version_key(vllm_version)[:2] < MTP_VERSION:
            method = _LEGACY_MTP.get(model_type or "", "mtp")
        return Speculative(method, tokens, extra_kv_layers=layers)
    if kind == "eagle3":
        repo, _, n = rest.partition(":") if rest.count("/") <= 1 else (rest, "", "")
        if not repo or "/" not in repo:
            raise UsageError("bad --speculative", repr(value), "write eagle3:ORG/REPO[:N], e.g. "
                             "eagle3:nvidia/gpt-oss-120b-Eagle3-v3:3")
        tokens = _count(n, value) if n else 3
        hidden, vocab = hidden_size or 0, vocab_size or 0
        # one decoder layer (~12 x hidden^2 parameters) plus an LM head (vocab x hidden)
        draft = int((12 * hidden * hidden + vocab * hidden) * dtype_bytes)
        return Speculative("eagle3", tokens, model=repo, extra_kv_layers=1, draft_weight_bytes=draft)
    raise UsageError("unknown --speculative", repr(value), "use mtp[:N], eagle3:REPO[:N], auto or none")
