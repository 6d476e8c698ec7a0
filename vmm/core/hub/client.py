"""The one Hub client: what vmm asks the Hub's API, and what it makes of the answers.

``fetch_snapshot`` (pull) and ``remote_commit`` (``ls --updates``) make the call
``HfApi.model_info`` makes (huggingface_hub 2.4.0, ``hf_api.py``):
``GET {endpoint}/api/models/{repo}/revision/{rev}`` (``?blobs=true`` for per-file sizes and
hashes), through huggingface_hub's HTTP session and its ``hf_raise_for_status``, so the Hub's
error codes (gated, repo or revision not found) map as they do for ``hf``. The answer is
validated here, field by field: a malformed answer (not JSON, wrong shapes, missing keys,
wrong types) is a :class:`MalformedAnswer` (exit 4). Any other exception raised while vmm
reads the answer is a bug in vmm and is not caught (exit 1).

Endpoint and token are passed explicitly: huggingface_hub freezes ``HF_ENDPOINT``/``HF_TOKEN``
into its constants at import time. Every failure becomes a :class:`VmmError` with the
contract's exit code.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from vmm.core import hashing, jsonfile, settings
from vmm.core.errors import NotFoundError, RemoteError, UsageError, VmmError
from vmm.core import http_names as hdr

LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with access to this repo"
METADATA_ATTEMPTS = 4
TIMEOUT_S = 30.0


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


class MalformedAnswer(RemoteError):
    """The endpoint answered 200 with a document that is not what the Hub sends."""

    def __init__(self, why: str, endpoint: str, repo_id: str) -> None:
        super().__init__(f"the Hub sent a malformed answer ({why})", f"{endpoint} ({repo_id})",
                         "check HF_ENDPOINT points at a Hugging Face-compatible server")
        self.why = why


class _Shape(Exception):
    """Raised by the validators below; becomes MalformedAnswer with the endpoint named."""


# --------------------------------------------------------------------------- the answer

def _field(doc: dict, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    if value is None:
        raise _Shape(f"{where} has no {key!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Shape(f"{where}: {key!r} is {type(value).__name__}")
    return value


def _commit_of(doc: Any) -> str:
    if not isinstance(doc, dict):
        raise _Shape(f"the model info is {type(doc).__name__}, not an object")
    sha = _field(doc, "sha", str, "the model info")
    if not hashing.looks_like_sha1(sha):
        raise _Shape(f"'sha' {sha[:50]!r} is not a commit sha")
    return sha


def _file_of(entry: Any, index: int) -> RemoteFile:
    """One entry of ``siblings`` (``?blobs=true``): rfilename, size, blobId, lfs.sha256."""
    where = f"siblings[{index}]"
    if not isinstance(entry, dict):
        raise _Shape(f"{where} is {type(entry).__name__}, not an object")
    path = _field(entry, "rfilename", str, where)
    size = _field(entry, "size", int, where)
    if size < 0:
        raise _Shape(f"{where}: negative size")
    blob = _field(entry, "blobId", str, where, optional=True)
    lfs = _field(entry, "lfs", dict, where, optional=True)
    sha256 = None
    if lfs is not None:
        sha256 = _field(lfs, "sha256", str, f"{where}.lfs").lower()
        if not hashing.looks_like_sha256(sha256):
            raise _Shape(f"{where}.lfs: 'sha256' is not a sha256")
    if blob is not None and not hashing.looks_like_sha1(blob.lower()):
        raise _Shape(f"{where}: 'blobId' is not a sha1")
    return RemoteFile(path, size, sha256, blob.lower() if blob else None)


def parse_snapshot(doc: Any, repo_id: str, revision: str) -> RepoSnapshot:
    """A ``?blobs=true`` model info document -> RepoSnapshot; raises _Shape when malformed."""
    commit = _commit_of(doc)
    siblings = doc.get("siblings")
    if not isinstance(siblings, list):
        raise _Shape(f"'siblings' is {type(siblings).__name__}, not a list")
    return RepoSnapshot(repo_id, revision, commit, [_file_of(e, i) for i, e in enumerate(siblings)])


# --------------------------------------------------------------------------- the call

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
            return RemoteError(f"access to the repo was refused (HTTP {status})", repo_id, LOGIN_HINT)
        return NotFoundError(f"repo not found on the Hub (HTTP {status})", repo_id,
                             "check the name; private repos need `hf auth login` or HF_TOKEN")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return NotFoundError("file not found on the Hub", repo_id, "check the file name")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return RemoteError(f"the Hub refused the credentials (HTTP {status})", repo_id, LOGIN_HINT)
        if status == 404:
            return NotFoundError("not found on the Hub (HTTP 404)", repo_id, "check the name and revision")
        if status is not None and (status >= 500 or status == 429):
            return None
        return RemoteError(f"the Hub answered HTTP {status}", repo_id, "retry later")
    if isinstance(exc, hf_errors.HFValidationError):
        return UsageError("not a valid repo name or revision for the Hub", f"{repo_id}@{revision}",
                          "check the name")
    return None     # network errors (httpx, OSError, ssl) and anything else the call raised: retry


def _get_json(url: str, params: dict, token: str | None, repo_id: str, revision: str) -> Any:
    """One GET through huggingface_hub's session; the decoded JSON. Raises VmmError or a
    retryable exception; a body that is not JSON is MalformedAnswer."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    # Headers by hand: huggingface_hub's build_hf_headers may first fetch an "agent
    # harnesses" registry from the endpoint (2.4.0 utils/_detect_agent.py), a call vmm does
    # not need to make.
    headers = {hdr.USER_AGENT: hdr.USER_AGENT_VALUE, hdr.ACCEPT: "application/json"}
    if token:
        headers[hdr.AUTHORIZATION] = f"Bearer {token}"
    try:
        response = get_session().get(url, headers=headers, params=params, timeout=TIMEOUT_S)
        hf_raise_for_status(response)
        body = response.content
    except Exception as exc:  # noqa: BLE001 - the library's and the network's failures, mapped
        mapped = _map_error(exc, repo_id, revision)
        if mapped is not None:
            raise mapped from exc
        raise _Transient(exc) from exc
    try:
        return jsonfile.loads(body)        # nesting bounded: the answer comes from any endpoint
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Shape(f"not JSON ({exc})" if isinstance(exc, jsonfile.JsonDepthError) else "not JSON") from exc


class _Transient(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(" ".join(str(cause).split())[:160] or type(cause).__name__)


def _ask(repo_id: str, revision: str, blobs: bool, endpoint: str | None, token: str | None,
         attempts: int, parse):
    endpoint = (endpoint or settings.hub_endpoint()).rstrip("/")
    token = token if token is not None else settings.hub_token()
    url = f"{endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    last: _Transient | None = None
    for attempt in range(attempts):
        try:
            doc = _get_json(url, {"blobs": True} if blobs else {}, token, repo_id, revision)
            return parse(doc)
        except _Shape as exc:
            raise MalformedAnswer(str(exc), endpoint, repo_id) from None
        except _Transient as exc:
            last = exc
            if attempt < attempts - 1:
                time.sleep(min(4.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
    raise RemoteError("cannot reach the Hub", f"{endpoint} ({repo_id}): {last}",
                      "check the network or HF_ENDPOINT, then run the same command again")


def fetch_snapshot(repo_id: str, revision: str | None = None, endpoint: str | None = None,
                   token: str | None = None) -> RepoSnapshot:
    """Resolve ``revision`` to a commit and list its files (sizes, sha256, git blob ids)."""
    revision = revision or "main"
    return _ask(repo_id, revision, True, endpoint, token, METADATA_ATTEMPTS,
                lambda doc: parse_snapshot(doc, repo_id, revision))


def remote_commit(repo_id: str, revision: str, endpoint: str | None = None, token: str | None = None,
                  attempts: int = 1) -> str:
    """The commit sha ``revision`` points to on the Hub (no file listing)."""
    return _ask(repo_id, revision, False, endpoint, token, attempts, _commit_of)
