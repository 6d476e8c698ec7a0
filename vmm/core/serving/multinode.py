"""What must be identical on every node of a multi-node plan, and the manifest digest that proves it.

vLLM's docs ask every node for "an identical execution environment, including the model path
and Python packages" (vllm-project/vllm docs/serving/parallelism_scaling.md, "Multi-node
deployment"). NCCL and Gloo pick a network interface each; on hosts with several, set
``NCCL_SOCKET_IFNAME`` (NCCL user guide, "Environment Variables") and ``GLOO_SOCKET_IFNAME``
(PyTorch docs, torch.distributed "Common environment variables") alike on every node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from vmm.core import settings
from vmm.core.store import manifests

DIGEST_FORMAT = "vmm-manifest-digest-v1"


def manifest_digest(manifest: manifests.Manifest | None) -> str | None:
    """``sha256:<hex>`` over the commit and every file (path, size, sha256, git sha1), sorted by path.

    Stable across hosts and pulls: timestamps and usage counters are not in it. The text
    hashed is ``vmm-manifest-digest-v1\\n``, ``commit <sha>\\n``, then one
    ``<path>\\t<size>\\t<sha256>\\t<git sha1>\\n`` per file (empty for a missing hash).
    None for a hand-made directory (no manifest).
    """
    if manifest is None:
        return None
    lines = [DIGEST_FORMAT, f"commit {manifest.commit or ''}"]
    for entry in sorted(manifest.files, key=lambda f: f.path):
        lines.append(f"{entry.path}\t{entry.size}\t{(entry.sha256 or '').lower()}\t{(entry.git_sha1 or '').lower()}")
    return "sha256:" + hashlib.sha256(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


@dataclass
class NodeRequirements:
    """The facts a multi-node plan assumes equal on every node."""

    nodes: int
    model_path: str
    manifest_digest: str | None
    commit: str | None
    vllm_version: str | None
    env: dict[str, str | None] = field(default_factory=dict)

    def document(self) -> dict:
        return {"nodes": self.nodes, "model_path": self.model_path, "manifest_digest": self.manifest_digest,
                "commit": self.commit, "vllm_version": self.vllm_version, "env": self.env}

    def lines(self) -> list[str]:
        """One line per fact, for the dry-run table."""
        out = [f"model path {self.model_path}",
               f"manifest digest {self.manifest_digest or 'none (hand-made directory: compare files yourself)'}"
               " (`vmm check NAME --json` prints it on each node)",
               f"vLLM {self.vllm_version or 'version unknown here: install the same one on every node'}"]
        for key, value in self.env.items():
            out.append(f"{key}={value}" if value else f"{key} unset (set it to the same cluster interface, e.g. eth0)")
        return out


def requirements(nodes: int, model_path: str, manifest: manifests.Manifest | None,
                 vllm_version: str | None) -> NodeRequirements:
    return NodeRequirements(nodes, model_path, manifest_digest(manifest), manifest.commit if manifest else None,
                            vllm_version, settings.multinode_env())
