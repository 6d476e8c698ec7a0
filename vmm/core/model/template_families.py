"""Chat template families: vmm's defaults for models without a template, and the one table
that picks a family for a model (``vmm/data/<family>.jinja``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Family:
    name: str
    file: str                     # under vmm/data
    description: str
    bos_token: str | None         # used only when the model supplies none
    eos_token: str | None


FAMILIES: dict[str, Family] = {
    "chatml": Family("chatml", "chatml.jinja", "ChatML <|im_start|>role ... <|im_end|> (Qwen, Yi)",
                     None, "<|im_end|>"),
    "mistral": Family("mistral", "mistral.jinja", "Mistral <s>[INST] ... [/INST] answer</s> (no system role)",
                      "<s>", "</s>"),
    "dialogpt": Family("dialogpt", "dialogpt.jinja", "DialoGPT: turns joined by EOS",
                       None, "<|endoftext|>"),
    "generic": Family("generic", "generic.jinja", "### Human: / ### Assistant: turns",
                      None, None),
}

# The one table that picks a family: (family, what is matched, regular expression).
# Checked in order: model_type, then architectures, then the model's name; the first match
# wins, and no match means ``generic``. Yi checkpoints say model_type "llama" and
# LlamaForCausalLM (01-ai/Yi-6B config.json), so Yi is recognised by its name.
FAMILY_RULES: tuple[tuple[str, str, str], ...] = (
    ("chatml", "model_type", r"^(qwen|qwen2|qwen2_moe|qwen3|qwen3_moe|qwen3_next|yi)$"),
    ("mistral", "model_type", r"^(mistral|mixtral)$"),
    ("chatml", "architectures", r"^(QWen|Qwen2|Qwen3|Yi)[A-Za-z0-9]*ForCausalLM$|^QWenLMHeadModel$"),
    ("mistral", "architectures", r"^(Mistral|Mixtral)ForCausalLM$"),
    ("dialogpt", "name", r"dialogpt"),
    ("chatml", "name", r"qwen|(^|[/_.-])yi([/_.-]|$)"),
    ("mistral", "name", r"mistral|mixtral"),
)


def choose_family(model_type: str | None, architectures: list[str] | None, name: str | None) -> str:
    """The family default for a model, by :data:`FAMILY_RULES`."""
    subjects = {"model_type": [model_type or ""], "architectures": list(architectures or []),
                "name": [(name or "").lower()]}
    for family, what, pattern in FAMILY_RULES:
        if any(re.search(pattern, s, flags=re.I if what == "name" else 0) for s in subjects[what] if s):
            return family
    return "generic"


def family_template(family: str) -> str:
    spec = FAMILIES[family]
    return resources.files("vmm").joinpath("data", spec.file).read_text(encoding="utf-8")
