"""What vmm asks the Hub, through huggingface_hub (2.4.0 read).

Endpoint and token are passed explicitly to ``HfApi``: huggingface_hub freezes
``HF_ENDPOINT``/``HF_TOKEN`` into its constants at import time. Every failure becomes a
:class:`VmmError` with the contract's exit code.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from vmm.core import settings
from vmm.core.errors import NotFoundError, RemoteError, VmmError

LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with access to this repo"
METADATA_ATTEMPTS = 4


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None      # LFS files: the Hub's lfs sha256
    git_sha1: str | None    # git blob id (for LFS files: of the pointer, so not a content hash)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class RepoSnapshot:
    repo_id: str
    revision: str           # what was asked for
    commit: str             # the resolved commit sha
    files: list[RemoteFile]


def _map_error(exc: BaseException, repo_id: str, revision: str) -> VmmError | None:
    """A huggingface_hub / httpx exception -> VmmError; None when it is worth retrying."""
    from huggingface_hub import errors as hf_errors

    # GatedRepoError subclasses RepositoryNotFoundError: test it first.
    if isinstance(exc, hf_errors.GatedRepoError):
        return RemoteError("access to the repo was refused (gated or private)", repo_id, LOGIN_HINT)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return NotFoundError("revision not found on the Hub", f"{repo_id}@{revision}",
                             "check the branch, tag or commit sha")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        status = getattr(getattr(exc, "response", None), "status_code", 404)
        if status in (401, 403):
            return RemoteError("access to the repo was refused", repo_id, LOGIN_HINT)
        return NotFoundError("repo not found on the Hub", repo_id,
                             "check the name; private repos need `hf auth login` or HF_TOKEN")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return NotFoundError("file not found on the Hub", repo_id, "check the file name")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return RemoteError(f"the Hub refused the credentials (HTTP {status})", repo_id, LOGIN_HINT)
        if status == 404:
            return NotFoundError("not found on the Hub", repo_id, "check the name and revision")
        if status is not None and (status >= 500 or status == 429):
            return None
        return RemoteError(f"the Hub answered HTTP {status}", repo_id, "retry later")
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
        # Malformed JSON or an unexpected document from the endpoint.
        return RemoteError("the Hub sent a malformed answer", f"{settings.hub_endpoint()} ({repo_id})",
                           "check HF_ENDPOINT points at a Hugging Face-compatible server")
    module = type(exc).__module__ or ""
    if isinstance(exc, OSError) or module.startswith(("httpx", "httpcore", "h11", "ssl")):
        return None
    return None


def fetch_snapshot(repo_id: str, revision: str | None = None, endpoint: str | None = None,
                   token: str | None = None) -> RepoSnapshot:
    """Resolve ``revision`` to a commit and list its files (sizes, sha256, git blob ids).

    One ``GET /api/models/{repo}/revision/{rev}?blobs=true`` (``model_info`` with
    ``files_metadata``) gives both the commit sha and the per-file metadata.
    """
    from huggingface_hub import HfApi

    revision = revision or "main"
    endpoint = endpoint or settings.hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token if token is not None else settings.hub_token())
    last: BaseException | None = None
    for attempt in range(METADATA_ATTEMPTS):
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
            commit = info.sha
            if not isinstance(commit, str) or not commit:
                raise ValueError("no sha in model info")
            files = []
            for sib in info.siblings or []:
                lfs = getattr(sib, "lfs", None)
                sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
                if sib.size is None:
                    raise ValueError(f"no size for {sib.rfilename}")
                files.append(RemoteFile(sib.rfilename, int(sib.size), sha256, sib.blob_id))
            return RepoSnapshot(repo_id, revision, commit, files)
        except Exception as exc:  # noqa: BLE001 - mapped below
            mapped = _map_error(exc, repo_id, revision)
            if mapped is not None:
                raise mapped from exc
            last = exc
            time.sleep(min(4.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
    detail = " ".join(str(last).split())[:160] if last else "unknown"
    raise RemoteError("the Hub could not be reached after retries", f"{endpoint} ({repo_id}): {detail}",
                      "check the network or HF_ENDPOINT, then run the same command again")
