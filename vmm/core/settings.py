"""Every environment variable vmm reads, read in one place.

Functions, not module constants: tests (and long-lived processes) change the environment
after import, and huggingface_hub's own constants are frozen at its import time, so vmm
passes the endpoint and token explicitly wherever it calls the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/models")
DEFAULT_ENDPOINT = "https://huggingface.co"

# name -> what it does; docs/environment.md is checked against this table by a test.
ENVIRONMENT: dict[str, str] = {
    "VMM_ROOT": "models root when --root is not given (default /models)",
    "VMM_DEBUG": "1 shows the full traceback of unexpected errors",
    "VMM_STATE_DIR": "where runtime records and logs of served models live (default <root>/.vmm)",
    "HF_ENDPOINT": "Hub endpoint (mirrors, test servers); default https://huggingface.co",
    "HF_TOKEN": "Hub access token; sent only to the endpoint's host",
    "HF_TOKEN_PATH": "file holding the token written by `hf auth login` (default $HF_HOME/token)",
    "HF_HOME": "Hugging Face home (default $XDG_CACHE_HOME/huggingface)",
    "XDG_CACHE_HOME": "base of the default HF_HOME (default ~/.cache)",
    "HF_HUB_CACHE": "Hugging Face cache whose verified blobs pull may reuse",
    "HF_HUB_OFFLINE": "1 forbids any network access (same as --offline)",
    "VMM_STALL_TIMEOUT": "seconds a download connection may send nothing before vmm drops it and resumes elsewhere (default 10)",
    "CUDA_VISIBLE_DEVICES": "GPUs that serve plans for and vLLM sees",
    "VLLM_TARGET_DEVICE": "cpu: take the vLLM on PATH for a CPU build (vLLM itself then picks its CPU platform)",
    "NO_COLOR": "disables colour in tables and progress (read by rich)",
    "COLUMNS": "width of the pull progress bar (rich reads it); tables and lists are never cut (one row per line)",
    "NCCL_SOCKET_IFNAME": "multi-node plans: NCCL's network interface, shown and passed on (same on every node)",
    "GLOO_SOCKET_IFNAME": "multi-node plans: Gloo's network interface, shown and passed on (same on every node)",
    "REGISTRY_AUTH_FILE": "OCI registry credentials file (podman/skopeo's auth.json); read first",
    "XDG_RUNTIME_DIR": "podman's default credentials: $XDG_RUNTIME_DIR/containers/auth.json",
    "DOCKER_CONFIG": "directory of docker's config.json (default ~/.docker)",
    "VMM_INSECURE_REGISTRIES": "comma-separated registry hosts (host or host:port) spoken to over plain HTTP",
}

MULTINODE_ENV = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def models_root(cli_root: str | os.PathLike[str] | None = None) -> Path:
    """The models root: ``--root``, else ``VMM_ROOT``, else ``/models``. Not created here."""
    raw = os.fspath(cli_root) if cli_root else os.environ.get("VMM_ROOT") or str(DEFAULT_ROOT)
    return Path(raw).expanduser().absolute()


def state_dir(root: Path) -> Path:
    raw = os.environ.get("VMM_STATE_DIR")
    return Path(raw).expanduser().absolute() if raw else root / ".vmm"


def multinode_env() -> dict[str, str | None]:
    """The interface variables a multi-node plan needs equal on every node (None: unset)."""
    return {key: os.environ.get(key) or None for key in MULTINODE_ENV}


def debug() -> bool:
    return _flag("VMM_DEBUG")


def offline() -> bool:
    return _flag("HF_HUB_OFFLINE")


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_home() -> Path:
    raw = os.environ.get("HF_HOME")
    if raw:
        return Path(raw).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


def hf_hub_cache() -> Path:
    raw = os.environ.get("HF_HUB_CACHE")
    return Path(raw).expanduser() if raw else hf_home() / "hub"


def hub_token() -> str | None:
    """``HF_TOKEN``, else the file ``hf auth login`` wrote (``HF_TOKEN_PATH``, ``$HF_HOME/token``)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home() / "token").expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def cuda_visible_devices() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` as set (None when unset; an empty value hides every GPU)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def vllm_target_device() -> str | None:
    """``VLLM_TARGET_DEVICE``, lower-cased, as vLLM reads it (vllm/envs.py, vLLM 0.32.0)."""
    raw = os.environ.get("VLLM_TARGET_DEVICE")
    return raw.strip().lower() if raw else None


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a child (vLLM, its argument parser) runs with: vmm's own, plus ``extra``."""
    return {**os.environ, **(extra or {})}


def registry_auth_files() -> list[Path]:
    """Where registry credentials are looked for, in order: ``REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman, containers-auth.json(5)),
    ``~/.config/containers/auth.json``, then docker's ``$DOCKER_CONFIG/config.json``
    (default ``~/.docker/config.json``)."""
    out: list[Path] = []
    raw = os.environ.get("REGISTRY_AUTH_FILE")
    if raw:
        out.append(Path(raw).expanduser())
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(Path(runtime) / "containers" / "auth.json")
    out.append(Path.home() / ".config" / "containers" / "auth.json")
    docker = os.environ.get("DOCKER_CONFIG")
    out.append((Path(docker).expanduser() if docker else Path.home() / ".docker") / "config.json")
    return out


def insecure_registries() -> set[str]:
    """Registry hosts (``host`` or ``host:port``, lower-cased) allowed over plain HTTP."""
    raw = os.environ.get("VMM_INSECURE_REGISTRIES", "")
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


DEFAULT_STALL_TIMEOUT_S = 10.0


def stall_timeout_s() -> float:
    """``VMM_STALL_TIMEOUT``: seconds a download connection may send nothing before it is
    dropped and its range resumed on a new one. Default 10 s, huggingface_hub's own
    download read timeout (``HF_HUB_DOWNLOAD_TIMEOUT``, constants.py, 2.4.0)."""
    from vmm.core.errors import UsageError
    from vmm.core.units import parse_duration

    raw = os.environ.get("VMM_STALL_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_STALL_TIMEOUT_S
    try:
        value = float(raw)            # plain seconds, or with a unit: 15s, 2m
    except ValueError:
        try:
            value = parse_duration(raw)
        except UsageError:
            value = -1.0
    if not 0.1 <= value <= 3600:
        raise UsageError("VMM_STALL_TIMEOUT must be seconds between 0.1 and 3600", raw, "e.g. VMM_STALL_TIMEOUT=10")
    return value
