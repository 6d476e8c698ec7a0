"""A model's manifest: what vmm recorded when it pulled or adopted the model.

``<model>/.vmm/manifest.json``: the repo, commit, every file with its size and hashes,
usage counters. Written atomically (temporary name, fsync, rename).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError
from vmm.core.fsutil import atomic_write_json
from vmm.core.store.paths import manifest_path

MANIFEST_VERSION = 1


@dataclass
class ManifestFile:
    path: str
    size: int
    sha256: str | None = None      # LFS files: the Hub's lfs.sha256
    git_sha1: str | None = None    # every file: the git blob id


@dataclass
class Manifest:
    """What vmm recorded when it pulled (or adopted) a model."""

    repo_id: str
    revision: str | None = None          # what was asked for (branch, tag or sha)
    commit: str | None = None            # the resolved commit sha
    quant: str | None = None
    files: list[ManifestFile] = field(default_factory=list)
    pulled_at: float | None = None
    last_used: float | None = None
    use_counts: dict[str, int] = field(default_factory=dict)
    pinned: bool = False
    previous_revisions: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["manifest_version"] = MANIFEST_VERSION
        doc["total_bytes"] = self.total_bytes
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in known}
        kwargs["files"] = [ManifestFile(**{k: v for k, v in f.items()
                                           if k in {"path", "size", "sha256", "git_sha1"}})
                           for f in doc.get("files", [])]
        if not isinstance(kwargs.get("repo_id"), str):
            raise ValueError("repo_id missing")
        return cls(**kwargs)


def read_manifest(model_dir: Path) -> Manifest | None:
    """The model's manifest, None for a hand-made directory; exit 5 when it is corrupt."""
    path = manifest_path(model_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError("cannot read manifest", str(path), exc.strerror or str(exc)) from exc
    try:
        return Manifest.from_json(jsonfile.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            "corrupt manifest", str(path), "run `vmm pull` again to rewrite it, or delete it"
        ) from exc


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    atomic_write_json(manifest_path(model_dir), manifest.to_json())


def touch_usage(model_dir: Path, what: str) -> None:
    """Record last-used time and a per-command count; silent on read-only roots."""
    try:
        manifest = read_manifest(model_dir)
    except IntegrityError:
        return
    if manifest is None:
        return
    manifest.last_used = time.time()
    manifest.use_counts[what] = manifest.use_counts.get(what, 0) + 1
    try:
        write_manifest(model_dir, manifest)
    except OSError:
        pass
