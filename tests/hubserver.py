"""A local Hugging Face Hub-compatible HTTP server for tests, benchmarks and offline demos.

Stdlib only (``http.server.ThreadingHTTPServer``). Serves model repos from directories (or
in-memory file dicts), with the endpoints huggingface_hub 2.4.0 uses (read in its
``hf_api.py`` / ``file_download.py`` / ``_snapshot_download.py``):

- ``GET /api/models/{repo}[/revision/{rev}]`` -> ``id``, ``sha``, ``siblings`` (with
  ``?blobs=true``: ``size``, ``blobId``, ``lfs{sha256,size,pointerSize}``)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``)
- ``POST /api/models/{repo}/paths-info/{rev}``
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Accept-Ranges``; Range -> 206 / 416; LFS files
  answer 302 to a second "CDN" listener (host ``localhost`` instead of ``127.0.0.1``) with a
  signed URL shaped like the Hub's (``/xet-bridge-us/<repo>/<hash>?Expires=..&Policy=..&
  Signature=..&Key-Pair-Id=..``, or the SigV4 ``X-Amz-*`` form) that expires after
  ``signed_url_ttl_s``; an expired URL gets S3's / CloudFront's 403 ``AccessDenied`` XML.
- ``GET /api/whoami-v2``
- errors: 404 + ``X-Error-Code: RepoNotFound|RevisionNotFound|EntryNotFound``; gated repos
  401 (no token) / 403 (wrong token) with ``X-Error-Code: GatedRepo``.

Fault injection (``server.faults``), counters (``server.bytes_served[path]``) and a request
log (``server.requests``) let tests assert what a client did.

As a script::

    python tests/hubserver.py --repo org/name=DIR [--repo org/other=DIR2] --port 0
        [--fake-hashes] [--rate BYTES_PER_S] [--signed-url-ttl S] [--ignore-range]
"""

from __future__ import annotations

import argparse
import calendar
import fnmatch
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_EXTENSIONS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")


# --------------------------------------------------------------------------- repo content

def synthetic_bytes(start: int, end: int) -> bytes:
    """Bytes [start, end) of a synthetic file of any size: every 4 KiB block holds its own
    block number (8 bytes, little-endian) 512 times, so any range can be made cheaply and
    bytes written at a wrong offset (a 32-bit overflow, an off-by-one chunk) read back wrong."""
    out = bytearray()
    block = start // 4096
    while block * 4096 < end:
        out += block.to_bytes(8, "little") * 512
        block += 1
    first = start - (start // 4096) * 4096
    return bytes(out[first:first + (end - start)])


class RepoFileEntry:
    """One file of one revision: bytes in memory, a path on disk or ``synthetic_size``
    bytes of :func:`synthetic_bytes` (listed by size only: hashing it would read it all);
    hashes computed lazily."""

    def __init__(self, path: str, data: bytes | None = None, disk: Path | None = None,
                 lfs: bool | None = None, synthetic_size: int | None = None) -> None:
        self.path = path
        self.data = data
        self.disk = disk
        self.synthetic = synthetic_size is not None
        if self.synthetic:
            self.size = synthetic_size
            lfs = False
        else:
            self.size = len(data) if data is not None else disk.stat().st_size
        self._lock = threading.Lock()
        self._sha256: str | None = None
        self._sha1: str | None = None
        if lfs is None:
            lfs = self.size >= LFS_THRESHOLD or path.lower().endswith(LFS_EXTENSIONS)
        self.lfs = lfs

    def read(self, start: int, end: int, handle=None) -> bytes:
        """Bytes [start, end); ``handle``: an open file of ``disk`` to reuse."""
        if self.synthetic:
            return synthetic_bytes(start, min(end, self.size))
        if self.data is not None:
            return self.data[start:end]
        if handle is not None:
            return os.pread(handle.fileno(), end - start, start)
        with open(self.disk, "rb") as own:
            return os.pread(own.fileno(), end - start, start)

    def _hash(self) -> None:
        if self.synthetic:
            raise RuntimeError(f"{self.path} is synthetic: listed by size only, never hashed")
        with self._lock:
            if self._sha256 is not None:
                return
            s256 = hashlib.sha256()
            s1 = hashlib.sha1(b"blob %d\0" % self.size)
            pos = 0
            while pos < self.size:
                block = self.read(pos, min(self.size, pos + (8 << 20)))
                s256.update(block)
                s1.update(block)
                pos += len(block)
            self._sha256, self._sha1 = s256.hexdigest(), s1.hexdigest()

    @property
    def sha256(self) -> str:
        self._hash()
        return self._sha256  # type: ignore[return-value]

    @property
    def git_sha1(self) -> str:
        """Git blob id of the file as git stores it (for LFS files: of the pointer file)."""
        self._hash()
        if self.lfs:
            return hashlib.sha1(b"blob %d\0" % len(self.pointer) + self.pointer).hexdigest()
        return self._sha1  # type: ignore[return-value]

    @property
    def content_sha1(self) -> str:
        self._hash()
        return self._sha1  # type: ignore[return-value]

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {self.size}\n").encode()


@dataclass
class Revision:
    name: str
    files: dict[str, RepoFileEntry]
    commit: str = ""


@dataclass
class Repo:
    repo_id: str
    revisions: dict[str, Revision] = field(default_factory=dict)   # branch name -> revision
    gated_tokens: set[str] | None = None   # None: public; else tokens allowed

    def find(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        for revision in self.revisions.values():
            if revision.commit == rev:
                return revision
        return None


def load_files(source: Path | dict[str, bytes]) -> dict[str, RepoFileEntry]:
    if isinstance(source, dict):
        return {p: RepoFileEntry(p, data=(d.encode() if isinstance(d, str) else d))
                for p, d in source.items()}
    files: dict[str, RepoFileEntry] = {}
    base = Path(source)
    for path in sorted(base.rglob("*")):
        if path.is_file():
            rel = path.relative_to(base).as_posix()
            if rel.startswith(".git/") or rel.startswith(".vmm/"):
                continue
            files[rel] = RepoFileEntry(rel, disk=path)
    return files


# --------------------------------------------------------------------------- faults

@dataclass
class Fault:
    """One injected misbehaviour on file bodies (resolve and CDN GETs).

    kind: ``status`` (answer ``status`` with optional ``retry_after``), ``reset`` (close the
    connection after ``after_bytes`` of the body: with a TCP RST, or a FIN when ``rst=False``), ``stall`` (send ``after_bytes`` of the body,
    then nothing for ``seconds`` with the connection open, then close it: a link that went
    silent), ``corrupt`` (flip the byte at file offset ``offset`` when a served range covers
    it), ``lie_size`` (advertise ``size`` in headers), ``ignore_range`` (answer 200 with the
    whole file whatever Range asked: a mirror without Range support), ``redirect`` (``/resolve/``
    answers 302 to ``location``, verbatim).
    ``times``: how many requests it hits (None: forever). ``path``: fnmatch on the file path.
    ``where``: ``any``, ``hub`` (the endpoint's own answers) or ``cdn`` (the signed-URL host).
    """

    kind: str
    path: str = "*"
    times: int | None = 1
    status: int = 500
    retry_after: float | None = None
    after_bytes: int = 0
    offset: int = 0
    size: int = 0
    seconds: float = 60.0
    location: str = ""
    where: str = "any"
    hits: int = 0
    hangups: int = 0        # stall: clients that hung up while it was silent
    rst: bool = True        # reset: close with a TCP RST (False: a clean FIN, a short body)

    def matches(self, path: str, cdn: bool | None) -> bool:
        if cdn is not None and self.where != "any" and self.where != ("cdn" if cdn else "hub"):
            return False
        return fnmatch.fnmatch(path, self.path)

    def take(self, path: str, cdn: bool | None = None) -> bool:
        if not self.matches(path, cdn):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Fault] = []
        self.rate_bytes_per_s: float | None = None   # per connection cap on bodies
        self.latency_s: float = 0.0                   # added before every answer (a link's round trip)

    def add(self, kind: str, **kwargs) -> Fault:
        fault = Fault(kind, **kwargs)
        with self.lock:
            self.items.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
        self.rate_bytes_per_s = None
        self.latency_s = 0.0

    def take(self, kind: str, path: str, cdn: bool | None = None) -> Fault | None:
        with self.lock:
            for fault in self.items:
                if fault.kind == kind and fault.take(path, cdn):
                    return fault
        return None

    def peek(self, kind: str, path: str, cdn: bool | None = None) -> Fault | None:
        with self.lock:
            for fault in self.items:
                if fault.kind == kind and fault.matches(path, cdn) and (
                        fault.times is None or fault.hits < fault.times):
                    return fault
        return None


# --------------------------------------------------------------------------- the server

@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    cdn: bool


def fake_commit(repo_id: str, name: str, files: dict[str, RepoFileEntry]) -> str:
    digest = hashlib.sha1(f"{repo_id}\0{name}\0".encode())
    for path in sorted(files):
        digest.update(f"{path}\0{files[path].size}\0".encode())
        entry = files[path]
        if entry.data is not None:
            digest.update(hashlib.sha1(entry.data).digest())
        elif entry.synthetic:
            digest.update(b"synthetic")
        else:
            stat = entry.disk.stat()
            digest.update(f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-request (vmm closing a connection it gave up on, a killed
    pull) is normal here: don't print socketserver's traceback into the test's stderr,
    where it would read as vmm's own."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class HubServer:
    """Context manager: ``with HubServer() as hub: hub.add_repo(...); hub.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.lock = threading.Lock()
        self.bytes_served: dict[str, int] = {}
        self.requests: list[LoggedRequest] = []
        self.tokens: dict[str, str] = {}   # token -> user name, for whoami
        self.lfs_by_sha: dict[str, RepoFileEntry] = {}
        self.metadata_override: dict[str, bytes] = {}   # url path -> raw body (malformed JSON tests)
        # Signed CDN URLs, as huggingface.co's /resolve/ sends for LFS files (a 302 to
        # cas-bridge.xethub.hf.co/xet-bridge-us/<repo>/<hash>?...): "cloudfront" (Expires,
        # Policy, Signature, Key-Pair-Id: what the Hub sent in 2026) or "sigv4" (X-Amz-Date,
        # X-Amz-Expires, X-Amz-Signature, ...: what it sent in 2025 and early 2026).
        self.signed_url_style = "cloudfront"
        self.signed_url_ttl_s = 3600.0                  # the lifetime the URL states
        self.signed_url_valid_s: float | None = None    # the CDN refuses URLs older than this (None: ttl)
        self.cdn_refusals = 0                           # 403s the CDN sent for expired URLs
        self._secret = os.urandom(16)
        self._issued: dict[str, float] = {}             # signature -> time.monotonic() it was made
        self.stopping = threading.Event()
        self._host = host
        self.main = _QuietServer((host, port), _handler(self, cdn=False))
        self.cdn = _QuietServer((host, cdn_port), _handler(self, cdn=True))
        self.main.daemon_threads = self.cdn.daemon_threads = True
        self._threads: list[threading.Thread] = []

    # ---- set up
    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.main.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        # A different host name for the same machine: the Authorization header must not go here.
        return f"http://localhost:{self.cdn.server_address[1]}"

    def add_repo(self, repo_id: str, source: Path | dict[str, bytes], revision: str = "main",
                 gated_tokens: set[str] | None = None, lfs: dict[str, bool] | None = None,
                 fake_hashes: bool = False) -> str:
        """Add (or add a revision to) a repo; return the fake commit sha of that revision.

        ``fake_hashes``: advertise made-up hashes instead of reading every byte to hash it,
        for plan tests and benchmarks on multi-GB sparse repos that are never pulled whole
        (a pull of such a repo fails verification, as it should).
        """
        files = load_files(source)
        for path, flag in (lfs or {}).items():
            files[path].lfs = flag
        if fake_hashes:
            for entry in files.values():
                entry._sha256 = hashlib.sha256(f"fake:{entry.path}:{entry.size}".encode()).hexdigest()
                entry._sha1 = hashlib.sha1(f"fake:{entry.path}:{entry.size}".encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        if gated_tokens is not None:
            repo.gated_tokens = set(gated_tokens)
        rev = Revision(revision, files, fake_commit(repo_id, revision, files))
        repo.revisions[revision] = rev
        return rev.commit

    def count(self, path: str) -> int:
        with self.lock:
            return self.bytes_served.get(path, 0)

    def total_served(self) -> int:
        with self.lock:
            return sum(self.bytes_served.values())

    def reset_counters(self) -> None:
        with self.lock:
            self.bytes_served.clear()
            self.requests.clear()

    # ---- run
    def start(self) -> HubServer:
        for srv in (self.main, self.cdn):
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def sign(self, repo_id: str, entry: RepoFileEntry) -> str:
        """A signed CDN URL for ``entry``, in ``signed_url_style``."""
        import base64
        import hmac

        now = time.time()
        ttl = max(1, int(self.signed_url_ttl_s)) if self.signed_url_style == "sigv4" else self.signed_url_ttl_s
        expires = int(now + ttl)
        path = f"/xet-bridge-us/{hashlib.md5(repo_id.encode()).hexdigest()[:24]}/{entry.sha256}"
        name = entry.path.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        if self.signed_url_style == "sigv4":
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            params = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
                      "X-Amz-Credential": f"cas/{stamp[:8]}/us-east-1/s3/aws4_request", "X-Amz-Date": stamp,
                      "X-Amz-Expires": str(ttl)}
            signed = f"{path}\n{stamp}\n{ttl}"
            params["X-Amz-Signature"] = sig = hmac.new(self._secret, signed.encode(), "sha256").hexdigest()
            params.update({"X-Amz-SignedHeaders": "host", "X-Xet-Cas-Uid": "public",
                           "response-content-disposition": disposition, "x-id": "GetObject"})
        else:
            policy = json.dumps({"Statement": [{"Resource": f"{self.cdn_url}{path}*", "Condition": {
                "DateLessThan": {"AWS:EpochTime": expires}}}]}, separators=(",", ":"))
            # CloudFront's URL-safe base64: + = / become - _ ~
            encoded = base64.b64encode(policy.encode()).decode().translate(str.maketrans("+=/", "-_~"))
            sig = hmac.new(self._secret, f"{path}\n{expires}".encode(), "sha256").hexdigest()
            params = {"Expires": str(expires), "Policy": encoded, "Signature": sig,
                      "Key-Pair-Id": "KTESTHUBKEY0001", "X-Xet-Cas-Uid": "public",
                      "response-content-disposition": disposition}
        with self.lock:
            self._issued[sig] = time.monotonic()
        return f"{self.cdn_url}{path}?{urlencode(params, quote_via=quote)}"

    def check_signature(self, path: str, query: dict[str, list[str]]) -> tuple[bool, float]:
        """(signature valid, seconds since it was made) for a CDN request."""
        import hmac

        one = {k: v[0] for k, v in query.items() if v}
        if "X-Amz-Signature" in one:
            sig = one["X-Amz-Signature"]
            signed = f"{path}\n{one.get('X-Amz-Date')}\n{one.get('X-Amz-Expires')}"
        else:
            sig = one.get("Signature", "")
            signed = f"{path}\n{one.get('Expires')}"
        good = hmac.compare_digest(sig, hmac.new(self._secret, signed.encode(), "sha256").hexdigest())
        with self.lock:
            issued = self._issued.get(sig)
        return good and issued is not None, (time.monotonic() - issued) if issued is not None else 0.0

    def stop(self) -> None:
        self.stopping.set()
        for srv in (self.main, self.cdn):
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _handler(hub: HubServer, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "vmm-test-hub/1"

        def log_message(self, fmt, *args):  # quiet
            pass

        # ---- helpers
        def _log(self) -> None:
            with hub.lock:
                hub.requests.append(LoggedRequest(self.command, self.path,
                                                  {k: v for k, v in self.headers.items()}, cdn))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, doc, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(doc).encode(), headers)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json({"error": message}, status, headers)

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:].strip() if auth.startswith("Bearer ") else None

        def _find_repo(self, rest: str) -> tuple[Repo | None, str]:
            for repo_id in sorted(hub.repos, key=len, reverse=True):
                if rest == repo_id or rest.startswith(repo_id + "/"):
                    return hub.repos[repo_id], rest[len(repo_id):].lstrip("/")
            return None, rest

        def _gate(self, repo: Repo) -> bool:
            if repo.gated_tokens is None:
                return True
            token = self._token()
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. "
                                              "You must have access to it and be authenticated.")
                return False
            if token not in repo.gated_tokens:
                self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and "
                                              "you are not in the authorized list.")
                return False
            return True

        # ---- verbs
        def do_HEAD(self):
            self._dispatch()

        def do_GET(self):
            self._dispatch()

        def do_POST(self):
            self._dispatch()

        def _dispatch(self) -> None:
            self._log()
            if hub.faults.latency_s:
                time.sleep(hub.faults.latency_s)
            try:
                split = urlsplit(self.path)
                path = split.path
                query = parse_qs(split.query)
                if path in hub.metadata_override:
                    self._send(200, hub.metadata_override[path])
                    return
                if cdn:
                    self._cdn(path)
                elif path == "/api/whoami-v2":
                    self._whoami()
                elif path.startswith("/api/models/"):
                    self._api(path[len("/api/models/"):], query)
                elif "/resolve/" in path:
                    self._resolve(path.lstrip("/"))
                else:
                    self._error(404, None, "not found")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _whoami(self) -> None:
            token = self._token()
            if not token or token not in hub.tokens:
                self._error(401, None, "Invalid credentials in Authorization header")
                return
            self._json({"type": "user", "name": hub.tokens[token], "auth": {
                "type": "access_token", "accessToken": {"displayName": "test", "role": "read"}}})

        def _api(self, rest: str, query: dict) -> None:
            if self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
            repo, rest = self._find_repo(rest)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            if not self._gate(repo):
                return
            parts = rest.split("/", 1) if rest else []
            kind = parts[0] if parts else ""
            tail = parts[1] if len(parts) > 1 else ""
            if kind in ("", "revision"):
                rev_name = unquote(tail) if kind == "revision" else "main"
                revision = repo.find(rev_name)
                if revision is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
                    return
                self._json(self._info(repo, revision, "true" in query.get("blobs", [])))
            elif kind in ("tree", "paths-info"):
                rev_name, _, sub = tail.partition("/")
                revision = repo.find(unquote(rev_name))
                if revision is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev_name)}")
                    return
                if kind == "tree":
                    entries = self._tree(revision, unquote(sub),
                                         "true" in query.get("recursive", ["false"])[0].lower())
                    if entries is None:
                        self._error(404, "EntryNotFound", f"{sub} does not exist")
                        return
                    self._json(entries)
                else:
                    wanted = self._paths_info_request(body)
                    entries = [self._file_entry(revision.files[p]) for p in wanted
                               if p in revision.files]
                    self._json(entries)
            else:
                self._error(404, None, "not found")

        def _paths_info_request(self, body: bytes) -> list[str]:
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                return list(json.loads(body or b"{}").get("paths", []))
            return parse_qs(body.decode()).get("paths", [])

        def _file_entry(self, entry: RepoFileEntry) -> dict:
            if entry.synthetic:
                return {"type": "file", "size": entry.size, "path": entry.path}
            doc = {"type": "file", "oid": entry.git_sha1, "size": entry.size, "path": entry.path}
            if entry.lfs:
                doc["lfs"] = {"oid": entry.sha256, "size": entry.size,
                              "pointerSize": len(entry.pointer)}
            return doc

        def _tree(self, revision: Revision, sub: str, recursive: bool) -> list[dict] | None:
            sub = sub.strip("/")
            prefix = sub + "/" if sub else ""
            if sub and not any(p.startswith(prefix) for p in revision.files):
                return None
            out, dirs = [], set()
            for path in sorted(revision.files):
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):]
                segments = rel.split("/")
                for depth in range(1, len(segments)):
                    directory = prefix + "/".join(segments[:depth])
                    if directory not in dirs and (recursive or depth == 1):
                        dirs.add(directory)
                        out.append({"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),
                                    "size": 0, "path": directory})
                if recursive or len(segments) == 1:
                    out.append(self._file_entry(revision.files[path]))
            return out

        def _info(self, repo: Repo, revision: Revision, blobs: bool) -> dict:
            siblings = []
            for path in sorted(revision.files):
                entry = revision.files[path]
                sib = {"rfilename": path}
                if blobs and entry.synthetic:
                    sib["size"] = entry.size
                elif blobs:
                    sib["size"] = entry.size
                    sib["blobId"] = entry.git_sha1
                    if entry.lfs:
                        sib["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                      "pointerSize": len(entry.pointer)}
                siblings.append(sib)
            return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                    "modelId": repo.repo_id, "sha": revision.commit, "private": False,
                    "gated": False if repo.gated_tokens is None else "auto", "disabled": False,
                    "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                    "lastModified": "2026-01-01T00:00:00.000Z",
                    "createdAt": "2026-01-01T00:00:00.000Z"}

        def _resolve(self, rest: str) -> None:
            repo, tail = self._find_repo(rest)
            if repo is None or not tail.startswith("resolve/"):
                self._error(404, "RepoNotFound", "Repository not found")
                return
            if not self._gate(repo):
                return
            rev_name, _, file_path = tail[len("resolve/"):].partition("/")
            rev_name, file_path = unquote(rev_name), unquote(file_path)
            revision = repo.find(rev_name)
            if revision is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}")
                return
            entry = revision.files.get(file_path)
            if entry is None:
                self._error(404, "EntryNotFound", f"{file_path} does not exist on {rev_name}")
                return
            redirect = hub.faults.take("redirect", entry.path, cdn=False) if self.command == "GET" else None
            if redirect is not None:
                self._send(302, b"", {"Location": redirect.location, "X-Repo-Commit": revision.commit})
                return
            lie = hub.faults.peek("lie_size", entry.path)
            size = lie.size if lie else entry.size
            common = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
            if entry.lfs:
                hub.lfs_by_sha[entry.sha256] = entry
                headers = {**common, "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(size),
                           "ETag": f'"{entry.git_sha1}"', "Location": hub.sign(repo.repo_id, entry)}
                self._send(302, b"", headers)
                return
            etag = f'"synthetic-{entry.size}"' if entry.synthetic else f'"{entry.git_sha1}"'
            self._body(entry, {**common, "ETag": etag}, size)

        def _cdn(self, path: str) -> None:
            parts = path.split("/")
            if len(parts) != 4 or parts[1] != "xet-bridge-us":
                self._error(404, None, "not found")
                return
            if self.headers.get("Authorization"):
                # A presigned URL refuses an Authorization header, as real CDNs do.
                self._error(400, None, "Authorization header not allowed with a signed URL")
                return
            entry = hub.lfs_by_sha.get(parts[3])
            if entry is None:
                self._error(404, None, "no such object")
                return
            query = parse_qs(urlsplit(self.path).query)
            valid, age = hub.check_signature(path, query)
            if not valid:
                self._xml_error(403, "SignatureDoesNotMatch", "The request signature we calculated does "
                                "not match the signature you provided. Check your key and signing method.")
                return
            if self._expired(query, age):
                with hub.lock:
                    hub.cdn_refusals += 1
                if "X-Amz-Signature" in query:
                    # S3's answer to an expired presigned URL.
                    self._xml_error(403, "AccessDenied", "Request has expired",
                                    f"<X-Amz-Expires>{query['X-Amz-Expires'][0]}</X-Amz-Expires>"
                                    f"<ServerTime>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}</ServerTime>")
                else:
                    # CloudFront's answer to a signed URL past its policy's DateLessThan.
                    self._xml_error(403, "AccessDenied", "Access denied")
                return
            lie = hub.faults.peek("lie_size", entry.path)
            self._body(entry, {"ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes"},
                       lie.size if lie else entry.size)

        def _expired(self, query: dict[str, list[str]], age: float) -> bool:
            """Checked when a request starts, as S3 and CloudFront do: a body already
            flowing goes on past the expiry."""
            if hub.signed_url_valid_s is not None and age > hub.signed_url_valid_s:
                return True
            try:
                if "X-Amz-Date" in query:
                    signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
                    return time.time() >= signed + float(query["X-Amz-Expires"][0])
                return time.time() >= float(query["Expires"][0])
            except (KeyError, ValueError):
                return True

        def _xml_error(self, status: int, code: str, message: str, extra: str = "") -> None:
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                    f"</Message>{extra}<RequestId>TESTHUB</RequestId></Error>").encode()
            self._send(status, body, content_type="application/xml")

        def _body(self, entry: RepoFileEntry, headers: dict[str, str], advertised: int) -> None:
            if self.command == "GET":
                fault = hub.faults.take("status", entry.path, cdn)
                if fault is not None:
                    extra = {}
                    if fault.retry_after is not None:
                        extra["Retry-After"] = str(fault.retry_after if fault.retry_after % 1
                                                   else int(fault.retry_after))
                    self._json({"error": "injected failure"}, fault.status, extra)
                    return
            size = entry.size
            start, end, status = 0, size, 200
            rng = self.headers.get("Range")
            if rng and self.command == "GET" and hub.faults.take("ignore_range", entry.path, cdn):
                rng = None          # a mirror without Range support: the whole file, 200
            if rng:
                match = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if not match or (not match.group(1) and not match.group(2)):
                    self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                    return
                if match.group(1):
                    start = int(match.group(1))
                    end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                else:
                    start, end = max(0, size - int(match.group(2))), size
                if start >= size or start >= end:
                    self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{advertised}"}
            length = (end - start) if status == 206 else advertised
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            reset = hub.faults.take("reset", entry.path, cdn) or hub.faults.take("stall", entry.path, cdn)
            corrupt = hub.faults.peek("corrupt", entry.path)
            if corrupt is not None and start <= corrupt.offset < end:
                corrupt = hub.faults.take("corrupt", entry.path)
            else:
                corrupt = None
            rate = hub.faults.rate_bytes_per_s
            handle = open(entry.disk, "rb") if entry.disk is not None else None
            try:
                self._stream(entry, start, end, reset, corrupt, rate, handle)
            finally:
                if handle is not None:
                    handle.close()

        def _stream(self, entry, start, end, reset, corrupt, rate, handle) -> None:
            began = time.monotonic()
            sent = 0
            pos = start
            if handle is not None and reset is None and corrupt is None:
                # Zero-copy path (benchmarks): the server must not be what limits the clients.
                out = self.connection.fileno()
                while pos < end:
                    n = os.sendfile(out, handle.fileno(), pos, min(end - pos, 1 << 20))
                    if n <= 0:
                        return
                    pos += n
                    sent += n
                    self._count(entry.path, n)
                    if rate:
                        ahead = sent / rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
                return
            block_size = 256 * 1024
            while pos < end:
                block = entry.read(pos, min(end, pos + block_size), handle)
                if corrupt is not None and pos <= corrupt.offset < pos + len(block):
                    i = corrupt.offset - pos
                    block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1:]
                if reset is not None and sent + len(block) > reset.after_bytes:
                    part = block[: max(0, reset.after_bytes - sent)]
                    if part:
                        self.wfile.write(part)
                        self._count(entry.path, len(part))
                    self.wfile.flush()
                    if reset.kind == "stall":
                        self._stall(reset)
                        return
                    if reset.rst:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(block)
                self._count(entry.path, len(block))
                sent += len(block)
                pos += len(block)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

        def _stall(self, fault: Fault) -> None:
            """Silent with the connection open (a dead CDN node, a NAT that forgot the flow)
            for ``fault.seconds``; a client that hangs up meanwhile is counted in
            ``fault.hangups`` (it noticed the silence)."""
            import select

            self.close_connection = True
            until = time.monotonic() + fault.seconds
            while time.monotonic() < until and not hub.stopping.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable:
                    try:
                        data = self.connection.recv(1, socket.MSG_PEEK)
                    except OSError:
                        data = b""
                    if not data:
                        with hub.lock:
                            fault.hangups += 1
                        return

        def _count(self, path: str, n: int) -> None:
            with hub.lock:
                hub.bytes_served[path] = hub.bytes_served.get(path, 0) + n

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve directories as Hugging Face model repos.")
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR",
                        help="a repo to serve (repeatable); ORG/NAME@REV=DIR adds a revision")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None,
                        help="cap each connection's body bytes/s (e.g. 104857600)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every answer")
    parser.add_argument("--signed-url-ttl", type=float, default=3600.0,
                        help="seconds the CDN URLs of LFS files stay valid (then 403, as S3/CloudFront answer)")
    parser.add_argument("--signed-url-style", choices=["cloudfront", "sigv4"], default="cloudfront")
    parser.add_argument("--ignore-range", action="store_true", help="answer 200 with the whole file to Range requests")
    parser.add_argument("--fake-hashes", action="store_true",
                        help="advertise made-up hashes (plans of huge sparse repos; pulls then fail verification)")
    args = parser.parse_args(argv)
    hub = HubServer(args.host, args.port)
    for spec in args.repo:
        name, _, directory = spec.partition("=")
        name, _, rev = name.partition("@")
        if not directory or not Path(directory).is_dir():
            parser.error(f"--repo {spec}: not ORG/NAME=DIR with an existing DIR")
        hub.add_repo(name, Path(directory), revision=rev or "main", fake_hashes=args.fake_hashes)
    hub.faults.rate_bytes_per_s = args.rate
    hub.faults.latency_s = args.latency
    hub.signed_url_ttl_s, hub.signed_url_style = args.signed_url_ttl, args.signed_url_style
    if args.ignore_range:
        hub.faults.add("ignore_range", times=None)
    hub.start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
