"""Usage and totals for ``vmm ls``: sort orders, root bytes (hardlinks once), free bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmm.core.store import local

SORTS = ("name", "size", "used")


@dataclass
class RootTotals:
    models: int
    total_bytes: int          # on the filesystem: every inode once (hardlinked copies counted once)
    apparent_bytes: int       # the sum of the models' sizes
    shared_bytes: int         # apparent - total: what hardlinks (vmm dedup) save
    free_bytes: int | None    # free on the root's filesystem; None when it cannot be read


def totals(root: Path, models: list, inodes: dict[tuple[int, int], int]) -> RootTotals:
    apparent = sum(m.size_bytes for m in models)
    total = sum(inodes.values())
    try:
        free = local.free_bytes(Path(root))
    except OSError:
        free = None
    return RootTotals(len(models), total, apparent, max(0, apparent - total), free)


def sort_models(models: list, by: str) -> list:
    """``name`` (as listed), ``size`` (largest first), ``used`` (most recent first, never last)."""
    if by == "size":
        return sorted(models, key=lambda m: (-m.size_bytes, m.name))
    if by == "used":
        used = [m for m in models if m.last_used]
        never = [m for m in models if not m.last_used]
        return sorted(used, key=lambda m: (m.last_used, m.uses), reverse=True) + never
    return list(models)
