"""What ``vmm serve`` was asked for: one keyword-only request that the launcher, the
placement and the planner all read (``--max-model-len`` to ``--quantization``).

Keyword-only, so a new field cannot shift the others; every field has the meaning of the
flag it comes from. ``gguf_quant`` is the GGUF file's quantization *tag* (``:Q4_K_M`` in the
model name), ``quantization`` the vLLM ``--quantization`` method: two different things.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class ServeRequest:
    name: str
    model_dir: Path
    served_name: str
    host: str = "127.0.0.1"
    port: int | None = 8000          # None: 8000, or the next free one
    device: str = "auto"             # auto, cuda, cpu
    gpus: str | None = None          # --gpus 8xH200 or N (with gpu_memory): plan for other hardware
    gpu_memory: str | None = None    # --gpu-memory SIZE
    nodes: int = 1
    gguf_quant: str | None = None    # the :QUANT tag choosing a .gguf file
    tokenizer: str | None = None
    quantization: str | None = None  # vLLM --quantization: checked, and weights sized at it
    trust_remote_code: bool = False
    # what the planner reads
    max_model_len: int | None = None
    min_context: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    kv_cache_dtype: str | None = None
    enforce_eager: bool = False
    vllm_version: str | None = None  # the target vLLM (the installed one's when None)
    data_parallel_size: int | None = None   # -dp: replicas (None: the planner's layout)
    expert_parallel: bool | None = None     # --expert-parallel / --no-expert-parallel (None: the planner's)
    speculative: str | None = None          # --speculative mtp[:N] | eagle3:REPO[:N] | auto | none
    explicit_budget: bool = False           # co-located: always pass --gpu-memory-utilization
    gpu_policy: str = "pack"                # this host's GPUs: "pack" (fewest that fit) or "all" (every free one)
    # placement, parsers and the rest
    passthrough: list[str] = field(default_factory=list)
    gpu_ids: list[int] | None = None  # --gpu-ids: placement override
    root: Path | None = None          # whose runtime records say which GPUs and ports are taken
    remote: Any = None                # a hub.remote.RemoteModel: plan from the Hub (nothing local)
    on_this_host: bool = True         # False (Kubernetes manifests): no GPU placement or port choice here
    tool_parser: str | None = None       # --tool-parser NAME|none (None: vmm chooses)
    reasoning_parser: str | None = None  # --reasoning-parser NAME|none (None: vmm chooses)
    force: bool = False                  # serve even what the target vLLM cannot serve
    cache_dir: Path | None = None        # where the installed vLLM's registries are cached

    def but(self, **changes) -> "ServeRequest":
        """A copy with ``changes`` (placement tries sizes and budgets without touching the original)."""
        return replace(self, **changes)


def plan_only(**fields) -> ServeRequest:
    """A request that only the planner reads (tests, ``pull --fit``, the oracle): no model folder."""
    return ServeRequest(name=fields.pop("name", "model"), model_dir=fields.pop("model_dir", Path(".")),
                        served_name=fields.pop("served_name", "model"), **fields)
