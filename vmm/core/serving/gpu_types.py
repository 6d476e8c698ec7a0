"""Named GPU types: ``--gpus 8xH200`` -> 8 GPUs of 141 GB, compute capability 9.0.

The table holds what a plan needs from a GPU it cannot see: memory per GPU and the CUDA
compute capability. Memory is what the driver reports where public ``nvidia-smi`` output shows
it (H100/H800 81559 MiB, H200 143771 MiB, B200 183359 MiB); otherwise the vendor datasheet's
figure read as GiB (HBM and GDDR capacities are binary: an "80GB" H100 has 80 GiB of HBM, of
which the driver shows 79.6 GiB, so a datasheet figure is at most ~0.5 % high, inside the
planner's runtime margin). The capability is (NVIDIA's table,
https://developer.nvidia.com/cuda-gpus). What depends on the architecture follows from the
capability: bfloat16 from 8.0 (Ampere); fp8 in hardware from 8.9 (Ada, Hopper). vLLM 0.32
still loads fp8 checkpoints from 7.5 (``vllm/model_executor/layers/quantization/fp8.py``:
``get_min_capability`` 75; "for GPUs that lack FP8 hardware support, we can leverage the
Marlin kernel", weight-only), so below 8.9 vmm never *chooses* fp8 (KV cache or online
quantization) but serves fp8 checkpoints; and the Blackwell-only choices the
vLLM recipes make (``--kv-cache-dtype fp8`` with NVFP4 checkpoints, FlashInfer MoE
kernels: github.com/vllm-project/recipes ``models/*.yaml`` ``hardware_overrides.blackwell``)
from 10.0. AMD Instinct GPUs have no CUDA capability; vLLM's ROCm build takes the same
arguments, so they plan like a CUDA GPU with fp8 support (gfx942/gfx950).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmm.core.errors import UsageError

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class GpuType:
    name: str                       # canonical, as typed: "H200", "A100-40GB"
    memory_bytes: int               # per GPU, the datasheet's figure
    compute_capability: str | None  # "9.0"; None for AMD (ROCm)
    vendor: str                     # "nvidia" or "amd"
    source: str                     # the datasheet / product page the memory comes from

    @property
    def architecture(self) -> str:
        if self.vendor == "amd":
            return "cdna"
        major, minor = (int(x) for x in self.compute_capability.split("."))
        if major >= 10:
            return "blackwell"
        if major == 9:
            return "hopper"
        if (major, minor) == (8, 9):
            return "ada"
        if major == 8:
            return "ampere"
        return "older"


def capability_at_least(capability: str | None, wanted: float) -> bool:
    """True when the CUDA compute capability is known and >= ``wanted`` (e.g. 8.9)."""
    if not capability:
        return False
    try:
        major, minor = (int(x) for x in capability.split(".")[:2])
    except ValueError:
        return False
    return major + minor / 10 >= wanted - 1e-9


def supports_fp8(gpu: GpuType | None, capability: str | None = None) -> bool:
    """fp8 runs in hardware (NVIDIA >= 8.9, AMD Instinct MI300 and later)."""
    if gpu is not None and gpu.vendor == "amd":
        return True
    return capability_at_least(capability or (gpu.compute_capability if gpu else None), 8.9)


def is_blackwell(capability: str | None) -> bool:
    return capability_at_least(capability, 10.0)


def _t(name, gib, cc, source, vendor="nvidia", reported_mib=None):
    return GpuType(name, reported_mib * MIB if reported_mib else int(gib * GIB), cc, vendor, source)


_NV = "https://www.nvidia.com/en-us/data-center/"
# Memory: the vendor pages named; compute capability: https://developer.nvidia.com/cuda-gpus.
TYPES: tuple[GpuType, ...] = (
    _t("A100-40GB", 40, "8.0", _NV + "a100/"),
    _t("A100-80GB", 80, "8.0", _NV + "a100/"),
    _t("A10", 24, "8.6", _NV + "products/a10-gpu/"),
    _t("A10G", 24, "8.6", "https://aws.amazon.com/ec2/instance-types/g5/"),
    _t("L4", 24, "8.9", _NV + "l4/"),
    _t("L40", 48, "8.9", _NV + "l40/"),
    _t("L40S", 48, "8.9", _NV + "l40s/"),
    _t("RTX4090", 24, "8.9", "https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4090/"),
    _t("RTX5090", 32, "12.0", "https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/"),
    _t("RTX-PRO-6000", 96, "12.0", _NV + "rtx-pro-6000-blackwell-server-edition/"),
    _t("H100", 80, "9.0", _NV + "h100/", reported_mib=81559),
    _t("H100-NVL", 94, "9.0", _NV + "h100/"),
    _t("H800", 80, "9.0", _NV + "h100/", reported_mib=81559),
    _t("H20", 96, "9.0", "https://www.nvidia.cn/data-center/products/hgx/"),
    _t("H200", 141, "9.0", _NV + "h200/", reported_mib=143771),
    _t("GH200", 96, "9.0", _NV + "grace-hopper-superchip/"),
    _t("B200", 180, "10.0", _NV + "dgx-b200/", reported_mib=183359),
    _t("B300", 288, "10.3", _NV + "hgx/"),
    _t("GB200", 186, "10.0", _NV + "gb200-nvl72/"),
    _t("GB300", 288, "10.3", _NV + "gb300-nvl72/"),
    _t("MI300X", 192, None, "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html", "amd"),
    _t("MI325X", 256, None, "https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html", "amd"),
    _t("MI355X", 288, None, "https://www.amd.com/en/products/accelerators/instinct/mi350/mi355x.html", "amd"),
)

# Other spellings operators type (case and '-', '_', ' ' are ignored on top of these).
ALIASES = {"A100": "A100-80GB", "A10080G": "A100-80GB", "A10040G": "A100-40GB",
           "H100SXM": "H100", "H100PCIE": "H100", "H100-80GB": "H100", "H200SXM": "H200",
           "RTX6000PRO": "RTX-PRO-6000", "4090": "RTX4090", "5090": "RTX5090", "GEFORCERTX4090": "RTX4090"}


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text).upper()


_BY_KEY = {_key(t.name): t for t in TYPES}
_BY_KEY.update({_key(alias): _BY_KEY[_key(target)] for alias, target in ALIASES.items()})


def known_names() -> str:
    return ", ".join(t.name for t in TYPES)


def lookup(name: str) -> GpuType | None:
    return _BY_KEY.get(_key(name))


def from_device_name(device_name: str, total_bytes: int | None = None) -> GpuType | None:
    """The table's entry for what nvidia-smi / NVML calls a GPU ("NVIDIA H100 80GB HBM3"),
    None when unknown: the detected capability and memory are used as they are."""
    text = _key(device_name.replace("NVIDIA", "").replace("GeForce", ""))
    best = None
    for t in TYPES:
        base = _key(t.name.split("-")[0]) if t.name.startswith("A100") else _key(t.name)
        if text.startswith(base) and (best is None or len(base) > len(_key(best.name))):
            best = t
    if best is not None and best.name.startswith("A100") and total_bytes:
        best = _BY_KEY["A10040GB"] if total_bytes < 60 * GIB else _BY_KEY["A10080GB"]
    return best


@dataclass(frozen=True)
class GpuSpec:
    count: int
    memory_bytes: int
    gpu_type: GpuType | None        # None: --gpus N --gpu-memory SIZE

    @property
    def compute_capability(self) -> str | None:
        return self.gpu_type.compute_capability if self.gpu_type else None


_SPEC = re.compile(r"\s*(\d+)\s*[xX*]\s*(.+?)\s*")


def parse_gpus(text: str | None, gpu_memory_bytes: int | None = None) -> GpuSpec | None:
    """``--gpus`` as an operator writes it: ``8xH200`` / ``2xA100-40GB`` (a named type), or
    ``N`` with ``--gpu-memory SIZE``. ``--gpu-memory`` next to a named type overrides its memory
    (a MIG slice, a partly used GPU). None when neither is given (detect the local GPUs).
    Exit 2 with the known types for anything else."""
    if text is None:
        if gpu_memory_bytes is not None:
            raise UsageError("--gpu-memory needs --gpus", "", "e.g. --gpus 2 --gpu-memory 80GB, or --gpus 2xH100")
        return None
    text = str(text)
    if text.strip().isdigit():
        count = int(text)
        if count < 1:
            raise UsageError("bad --gpus", repr(text), "use at least 1 GPU, e.g. --gpus 8xH200")
        if gpu_memory_bytes is None:
            raise UsageError("--gpus N needs --gpu-memory SIZE or a GPU type", repr(text),
                             f"e.g. --gpus {count}xH100 or --gpus {count} --gpu-memory 80GB; types: {known_names()}")
        return GpuSpec(count, gpu_memory_bytes, None)
    match = _SPEC.fullmatch(text)
    kind = lookup(match.group(2)) if match else lookup(text)
    if kind is None:
        raise UsageError("unknown GPU type in --gpus", repr(text),
                         f"write COUNTxTYPE, e.g. 8xH200, or N with --gpu-memory SIZE; types: {known_names()}")
    count = int(match.group(1)) if match else 1
    if count < 1:
        raise UsageError("bad --gpus", repr(text), "use at least 1 GPU, e.g. --gpus 8xH200")
    return GpuSpec(count, gpu_memory_bytes or kind.memory_bytes, kind)
