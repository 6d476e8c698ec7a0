"""Is a newer commit on the Hub? One metadata call per managed model, in parallel.

``check_updates(root, models=None, max_workers=8) -> list[UpdateInfo]`` asks the Hub client
(:func:`vmm.core.hub.client.remote_commit`, the call ``HfApi.model_info`` makes) for each
managed model's tracked revision (the revision it was pulled at: a branch or tag is
followed; a pinned commit sha never updates). A model whose call fails gets its error in its
row; the others are still answered.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmm.core import settings
from vmm.core.errors import UsageError, VmmError
from vmm.core.hub import client
from vmm.core.store import local


@dataclass
class UpdateInfo:
    name: str
    revision: str | None           # what is tracked (branch, tag or sha)
    local_commit: str | None
    remote_commit: str | None
    update_available: bool | None  # None when the Hub could not be asked
    error: str | None = None


def _describe(exc: VmmError) -> str:
    return f"{exc.what}: {exc.which}" if exc.which else exc.what


def _one(model: local.LocalModel, endpoint: str, token: str | None) -> UpdateInfo:
    m = model.manifest
    assert m is not None
    tracked = m.revision or m.commit or "main"
    row = UpdateInfo(model.name, tracked, m.commit, None, None)
    try:
        row.remote_commit = client.remote_commit(m.repo_id, tracked, endpoint, token)
    except VmmError as exc:   # one model's failure is that model's row
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
