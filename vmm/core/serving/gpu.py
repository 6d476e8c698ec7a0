"""GPU discovery: NVML (nvidia-ml-py) when installed, else ``nvidia-smi``; honours
``CUDA_VISIBLE_DEVICES`` (indices or UUIDs; an empty value hides every GPU)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from vmm.core import settings
from vmm.core.errors import IncompatibleError

MIB = 1 << 20


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str | None = None
    uuid: str | None = None


def _visible(gpus: list[GpuInfo]) -> list[GpuInfo]:
    raw = settings.cuda_visible_devices()
    if raw is None:
        return gpus
    wanted = [w.strip() for w in raw.split(",") if w.strip()]
    out = []
    for w in wanted:
        for g in gpus:
            if (w.isdigit() and g.index == int(w)) or (g.uuid and (g.uuid == w or g.uuid.startswith(w))):
                out.append(g)
                break
        else:
            break    # CUDA stops at the first invalid entry
    return out


def _from_nvml() -> list[GpuInfo] | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: fall back to nvidia-smi / no GPU
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, int(mem.total),
                                int(mem.free), f"{major}.{minor}",
                                uuid.decode() if isinstance(uuid, bytes) else uuid))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """``index, uuid, name, memory.total, memory.free, compute_cap`` CSV (MiB, no units)."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            raise IncompatibleError("unexpected nvidia-smi output", line.strip()[:120],
                                    "check the NVIDIA driver, or plan with --gpus N --gpu-memory SIZE")
        try:
            index, total, free = int(parts[0]), int(float(parts[3])), int(float(parts[4]))
        except ValueError:
            raise IncompatibleError("unexpected nvidia-smi output", line.strip()[:120],
                                    "check the NVIDIA driver, or plan with --gpus N --gpu-memory SIZE") from None
        cc = parts[5] if parts[5] and parts[5] != "[N/A]" else None
        gpus.append(GpuInfo(index, parts[2], total * MIB, free * MIB, cc, parts[1]))
    return gpus


def _from_nvidia_smi() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=index,uuid,name,memory.total,memory.free,compute_cap",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []      # no driver or no device: nvidia-smi says so on stderr
    return parse_nvidia_smi(proc.stdout)


@dataclass
class GpuProcess:
    gpu_index: int
    pid: int
    used_bytes: int


def _processes_nvml() -> list[GpuProcess] | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                out.append(GpuProcess(i, int(proc.pid), int(proc.usedGpuMemory or 0)))
        return out
    except Exception:  # noqa: BLE001 - a driver without per-process accounting
        return None
    finally:
        pynvml.nvmlShutdown()


def parse_compute_apps(text: str, gpus: list[GpuInfo]) -> list[GpuProcess]:
    """``gpu_uuid, pid, used_memory`` CSV (MiB); rows that do not parse are skipped
    (``[N/A]`` memory in containers without per-process accounting)."""
    by_uuid = {g.uuid: g.index for g in gpus if g.uuid}
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or parts[0] not in by_uuid:
            continue
        try:
            out.append(GpuProcess(by_uuid[parts[0]], int(parts[1]), int(float(parts[2])) * MIB))
        except ValueError:
            continue
    return out


def compute_processes(gpus: list[GpuInfo]) -> list[GpuProcess] | None:
    """Processes holding GPU memory; None when the driver does not say (then vmm assumes
    none of its own servers' memory is visible yet, the cautious reading)."""
    found = _processes_nvml()
    if found is not None:
        return found
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-compute-apps=gpu_uuid,pid,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return parse_compute_apps(proc.stdout, gpus)


def discover() -> list[GpuInfo]:
    """The GPUs this process may use, best source first."""
    gpus = _from_nvml()
    if gpus is None:
        gpus = _from_nvidia_smi()
    return _visible(gpus)
