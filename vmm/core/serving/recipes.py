"""vmm's plan next to the vLLM recipes' own layouts (tests/data/recipes.json, extracted from
github.com/vllm-project/recipes by scripts/gen_recipes_data.py): one row per model and GPU set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vmm.core.errors import VmmError
from vmm.core.model.config import from_config_dict
from vmm.core.serving import gpu_types, planner, speculative
from vmm.core.serving.request import plan_only


@dataclass
class Comparison:
    entry: dict
    plan: planner.Plan | None
    error: str | None
    speculative_asked: str | None

    @property
    def layout(self) -> dict | None:
        if self.plan is None:
            return None
        return {"tp": self.plan.tensor_parallel_size, "dp": self.plan.data_parallel_size,
                "ep": self.plan.expert_parallel}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def compare(entry: dict, configs: Path, vllm_version: str = "0.34.0") -> Comparison:
    """Plan the recipe's model for the recipe's GPUs (weights: the recipe's parameter count at
    its precision), asking for MTP where the recipe's speculative feature is MTP."""
    cfg = from_config_dict(json.loads((configs / entry["config"]).read_text()))
    gpus = gpu_types.parse_gpus(entry["gpus"])
    hw = planner.Hardware("cuda", gpus.count, gpus.memory_bytes, gpus.compute_capability, source="given",
                          gpu_name=gpus.gpu_type.name if gpus.gpu_type else None)
    spec = entry.get("speculative")
    asked = None
    if spec and spec.get("method") != "eagle3":
        asked = f"mtp:{spec['num_speculative_tokens']}"
    elif spec:
        asked = f"eagle3:{spec['model']}:{spec['num_speculative_tokens']}"
    try:
        plan = planner.plan(cfg, entry["weight_bytes_estimate"], hw,
                            plan_only(vllm_version=vllm_version, speculative=asked))
        return Comparison(entry, plan, None, asked)
    except VmmError as exc:
        return Comparison(entry, None, exc.line(), asked)


def mtp_in_config(entry: dict, configs: Path) -> bool:
    doc = json.loads((configs / entry["config"]).read_text())
    return speculative.mtp_layers(doc, doc.get("model_type")) > 0
