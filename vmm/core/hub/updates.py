"""Is a newer commit on the Hub? One metadata call per managed model, in parallel.

``check_updates(root, models=None, max_workers=8) -> list[UpdateInfo]`` asks
``GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}`` (the call ``HfApi.model_info`` makes,
huggingface_hub 2.4.0 ``hf_api.py``) for each managed model's tracked revision (the
revision it was pulled at: a branch or tag is followed; a pinned commit sha never updates).
A model whose call fails gets its error in its row; the others are still answered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmm.core import hashing, settings
from vmm.core.store import local
from vmm.core.errors import UsageError

TIMEOUT_S = 15.0


@dataclass
class UpdateInfo:
    name: str
    revision: str | None           # what is tracked (branch, tag or sha)
    local_commit: str | None
    remote_commit: str | None
    update_available: bool | None  # None when the Hub could not be asked
    error: str | None = None


def remote_commit(repo_id: str, revision: str, endpoint: str | None = None,
                  token: str | None = None, timeout_s: float = TIMEOUT_S) -> str:
    """The commit sha ``revision`` points to on the Hub; raises ``OSError``/``ValueError``."""
    endpoint = (endpoint or settings.hub_endpoint()).rstrip("/")
    url = (f"{endpoint}/api/models/{urllib.parse.quote(repo_id, safe='/')}/revision/"
           f"{urllib.parse.quote(revision, safe='')}")
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "vmm"})
    if token:
        # add_unredirected_header: the token never follows a redirect to another host.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        doc = json.loads(response.read())
    sha = doc.get("sha") if isinstance(doc, dict) else None
    if not isinstance(sha, str) or not hashing.looks_like_sha1(sha):
        raise ValueError("the Hub answered without a commit sha")
    return sha


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        hint = {401: "auth refused: set HF_TOKEN or run `hf auth login`",
                403: "no access: request access on the Hub or check HF_TOKEN",
                404: "repo or revision not on the Hub"}.get(code, "the Hub failed")
        return f"HTTP {code}: {hint}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach the Hub: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _one(model: local.LocalModel, endpoint: str, token: str | None) -> UpdateInfo:
    m = model.manifest
    assert m is not None
    tracked = m.revision or m.commit or "main"
    row = UpdateInfo(model.name, tracked, m.commit, None, None)
    try:
        row.remote_commit = remote_commit(m.repo_id, tracked, endpoint, token)
    except Exception as exc:   # noqa: BLE001 - one model's failure is that model's row
        row.error = _describe(exc)
        return row
    row.update_available = row.remote_commit != m.commit
    return row


def check_updates(root: Path, models: list[local.LocalModel] | None = None,
                  max_workers: int = 8) -> list[UpdateInfo]:
    if settings.offline():
        raise UsageError("checking for updates needs the Hub", "HF_HUB_OFFLINE=1",
                         "unset HF_HUB_OFFLINE to ask the Hub")
    if models is None:
        models = []
        for d in local.model_dirs(Path(root)):
            try:
                models.append(local.load_model(d))
            except Exception:   # noqa: BLE001 - a corrupt manifest is ls's warning, not ours
                continue
    managed = [m for m in models if m.manifest is not None]
    if not managed:
        return []
    endpoint, token = settings.hub_endpoint(), settings.hub_token()
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(managed)))) as pool:
        return list(pool.map(lambda m: _one(m, endpoint, token), managed))
