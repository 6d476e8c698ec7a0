"""A fake ``nvidia-smi`` for tests: answers vmm's ``--query-gpu`` with the GPUs given and
``--query-compute-apps`` with the processes given (none by default).

``install(directory, gpus, processes=())`` writes an executable ``nvidia-smi`` into
``directory``; put that directory first on PATH (and keep NVML out: ``gpu._from_nvml`` ->
None). ``gpus``: (index, name, total MiB, free MiB, compute capability) tuples;
``processes``: (gpu index, pid, used MiB) tuples.
"""

from __future__ import annotations

import stat
from pathlib import Path

H100 = ("NVIDIA H100 80GB HBM3", 81559, "9.0")
L4 = ("NVIDIA L4", 23034, "8.9")


def uuid(index: int) -> str:
    return f"GPU-{index:04d}aaaa"


def smi_rows(gpus) -> str:
    return "".join(f"{i}, {uuid(i)}, {name}, {total}, {free}, {cc}\n" for i, name, total, free, cc in gpus)


def install(directory: Path, gpus, processes=(), code: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "nvidia-smi"
    apps = "".join(f"{uuid(g)}, {pid}, {mib}\n" for g, pid, mib in processes)
    exe.write_text("#!/bin/sh\n"
                   'case "$1" in\n'
                   f"  --query-compute-apps=*) printf '%s' '{apps}' ;;\n"
                   f"  *) cat <<'EOF'\n{smi_rows(gpus)}EOF\n;;\n"
                   "esac\n"
                   f"exit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe
