"""A fake ``nvidia-smi`` for tests: answers vmm's ``--query-gpu`` with the GPUs given.

``install(directory, gpus)`` writes an executable ``nvidia-smi`` into ``directory``;
put that directory first on PATH (and keep NVML out: ``gpu._from_nvml`` -> None).
``gpus``: (index, name, total MiB, free MiB, compute capability) tuples.
"""

from __future__ import annotations

import stat
from pathlib import Path

H100 = ("NVIDIA H100 80GB HBM3", 81559, "9.0")
L4 = ("NVIDIA L4", 23034, "8.9")


def smi_rows(gpus) -> str:
    return "".join(f"{i}, GPU-{i:04d}aaaa, {name}, {total}, {free}, {cc}\n" for i, name, total, free, cc in gpus)


def install(directory: Path, gpus, code: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_rows(gpus)}EOF\nexit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe
