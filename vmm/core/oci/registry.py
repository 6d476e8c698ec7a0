"""One OCI distribution registry: manifests and blobs over keep-alive HTTP, with auth.

Endpoints (opencontainers/distribution-spec ``spec.md`` v1.1.0): ``GET/PUT
/v2/<name>/manifests/<reference>``, ``HEAD/GET /v2/<name>/blobs/<digest>`` (``Range`` honoured
by conformant registries: 206), ``POST /v2/<name>/blobs/uploads/`` (202 + ``Location``;
``?mount=<digest>&from=<repo>`` for a cross-repository mount, 201 when it worked) then a
monolithic ``PUT <location>?digest=<digest>``. Blob GETs may redirect to storage (S3, a CDN):
redirects are followed by hand and the Authorization header goes only to the registry host.

Connections come from the Hub transfer engine (:class:`vmm.core.hub.connection.Connections`,
one set per worker thread); retryable failures (5xx, 429, resets, short bodies) raise its
:class:`~vmm.core.hub.connection.Retry`, the callers retry them with backoff.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError, NotFoundError, RemoteError
from vmm.core.hub.connection import Connections, Retry, host_key, retry_after
from vmm.core.oci import auth
from vmm.core.oci.artifact import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, digest_of
from vmm.core.oci.reference import Reference, scheme_for
from vmm.core import http_names as hdr

DEFAULT_TIMEOUT_S = 30.0
MAX_REDIRECTS = 6
BLOCK = 4 * 1024 * 1024          # upload send size
READ_BLOCK = 1024 * 1024         # download: what reaches the file (and a resume point) at a time
ATTEMPTS = 6
BACKOFF_BASE_S = 0.25       # doubled after each failed try, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 4.0
RETRY_AFTER_MAX_S = 30.0
LOGIN_HINT = "log in with `podman login {host}` or `docker login {host}` (vmm reads their auth files, docs/oci.md)"


def with_retries(fn: Callable[[], object], what: str, where: str, attempts: int = ATTEMPTS,
                 on_retry: Callable[[str], None] | None = None):
    """Run ``fn``, retrying :class:`Retry` with exponential backoff; exit 4 when it keeps failing."""
    delay = BACKOFF_BASE_S
    for attempt in range(attempts):
        try:
            return fn()
        except Retry as exc:
            if attempt == attempts - 1:
                raise RemoteError(f"the registry kept failing while {what} ({exc.why})", where,
                                  f"{attempts} tries; check the registry and run the same command again") from None
            if on_retry is not None:
                on_retry(exc.why)
            time.sleep(min(exc.delay, RETRY_AFTER_MAX_S) if exc.delay is not None else delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    raise AssertionError("unreachable")


class Registry:
    """The registry ``ref`` lives on, for the repository ``ref.repository``."""

    def __init__(self, ref: Reference, insecure: bool = False, push: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.ref = ref
        self.base = f"{scheme_for(ref, insecure)}://{ref.registry}"
        self.key = host_key(self.base)
        self.timeout = timeout
        self.scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        self._creds = auth.credentials(ref.registry)
        self._authorization: str | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[Connections] = []

    # ------------------------------------------------------------------ plumbing

    def conns(self) -> Connections:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = Connections(self.timeout)
            self._local.conns = conns
            with self._auth_lock:
                self._all.append(conns)
        return conns

    def close(self) -> None:
        with self._auth_lock:
            every, self._all = self._all, []
        for conns in every:
            conns.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/{path}"

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None = None,
              body_path: str | None = None, body_size: int = 0) -> http.client.HTTPResponse:
        """One request on one URL; the Authorization header only for the registry's own host."""
        key = host_key(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        conns = self.conns()
        all_headers = {hdr.USER_AGENT: hdr.USER_AGENT_VALUE, hdr.ACCEPT_ENCODING: "identity", **headers}
        if key == self.key and self._authorization:
            all_headers[hdr.AUTHORIZATION] = self._authorization
        try:
            conn = conns.get(key)
            if body_path is None:
                conn.request(method, target, body=body, headers=all_headers)
            else:
                conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in {**all_headers, hdr.CONTENT_LENGTH: str(body_size)}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                buf = bytearray(BLOCK)
                view = memoryview(buf)
                with open(body_path, "rb", buffering=0) as handle:
                    sent = 0
                    while sent < body_size:
                        n = handle.readinto(view[:min(BLOCK, body_size - sent)])
                        if not n:
                            raise IntegrityError("a file changed size while it was pushed", body_path,
                                                 "push again once nothing writes to the model")
                        conn.send(view[:n])
                        sent += n
            return conn.getresponse()
        except ssl.SSLError as exc:
            conns.drop(key)
            raise RemoteError("TLS with the registry failed", f"{self.ref.registry} ({exc.reason or exc})",
                              "a plain-HTTP registry needs --insecure or VMM_INSECURE_REGISTRIES (docs/oci.md)") from None
        except (OSError, http.client.HTTPException) as exc:
            conns.drop(key)
            raise Retry(f"{type(exc).__name__}: {exc}") from exc

    def _drain(self, resp: http.client.HTTPResponse, key=None, limit: int = 64 * 1024) -> bytes:
        try:
            data = resp.read(limit)
            if not resp.isclosed():
                resp.close()
                self.conns().drop(key or self.key)
            return data
        except (OSError, http.client.HTTPException):
            self.conns().drop(key or self.key)
            return b""

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None,
                body_path: str | None = None, body_size: int = 0, follow: bool = False
                ) -> tuple[http.client.HTTPResponse, str]:
        """Send with auth (one challenge answered), following redirects when ``follow``.
        Returns (response, the URL it came from); the caller reads or drains it."""
        headers = dict(headers or {})
        for attempt in range(2):
            sent = self._authorization
            resp = self._send(method, url, headers, body, body_path, body_size)
            if resp.status == 401 and attempt == 0:
                challenge = resp.getheader(hdr.WWW_AUTHENTICATE)
                self._drain(resp)
                self._authenticate(challenge, sent)
                continue
            break
        for _hop in range(MAX_REDIRECTS):
            if not follow or resp.status not in (301, 302, 303, 307, 308):
                return resp, url
            location = resp.getheader(hdr.LOCATION)
            self._drain(resp, host_key(url))
            if not location:
                raise Retry(f"HTTP {resp.status} without Location")
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise RemoteError("the registry redirected to a non-HTTP URL", url.split("?")[0],
                                  "the registry is misconfigured; nothing was written")
            resp = self._send(method, url, headers)
        raise RemoteError("too many redirects", url.split("?")[0], "the registry is misconfigured")

    def _authenticate(self, challenge: str | None, sent: str | None) -> None:
        """Answer a 401 to a request that carried ``sent`` (another thread may have logged in
        meanwhile: then its answer is used as it is)."""
        scheme, params = auth.parse_challenge(challenge)
        host = self.ref.registry
        with self._auth_lock:
            if self._authorization != sent:
                return
            if scheme == "basic":
                if self._creds is None:
                    raise RemoteError("the registry needs a login (HTTP 401)", host, LOGIN_HINT.format(host=host))
                header = auth.basic_header(self._creds)
                if self._authorization == header:
                    raise RemoteError("the registry refused the stored credentials (HTTP 401)", host,
                                      LOGIN_HINT.format(host=host))
                self._authorization = header
                return
            if scheme == "bearer" and params.get("realm"):
                self._authorization = "Bearer " + self._token(params)
                return
        raise RemoteError("the registry refused the request (HTTP 401)", host, LOGIN_HINT.format(host=host))

    def _token(self, params: dict[str, str]) -> str:
        from urllib.parse import urlencode

        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RemoteError("the registry's token realm is not an HTTP URL", realm, "the registry is misconfigured")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope") or self.scope)) if v}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {hdr.USER_AGENT: hdr.USER_AGENT_VALUE, hdr.ACCEPT: "application/json"}
        if self._creds is not None and auth.may_send_credentials(realm, self.ref.hostname):
            headers[hdr.AUTHORIZATION] = auth.basic_header(self._creds)
        key = host_key(url)
        parts = urlsplit(url)
        conns = self.conns()
        try:
            conn = conns.get(key)
            conn.request("GET", parts.path + "?" + parts.query, headers=headers)
            resp = conn.getresponse()
            data = resp.read(1024 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            conns.drop(key)
            raise Retry(f"token request: {type(exc).__name__}: {exc}") from exc
        if resp.status in (401, 403) and hdr.AUTHORIZATION not in headers:
            raise RemoteError(f"the registry needs a login (token service: HTTP {resp.status})", self.ref.registry,
                              LOGIN_HINT.format(host=self.ref.registry))
        if resp.status in (401, 403):
            raise RemoteError(f"the registry's token service refused the credentials (HTTP {resp.status})",
                              self.ref.registry, LOGIN_HINT.format(host=self.ref.registry))
        if resp.status >= 500 or resp.status == 429:
            raise Retry(f"token service HTTP {resp.status}")
        try:
            doc = jsonfile.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if resp.status != 200 or not isinstance(token, str) or not token:
            raise RemoteError(f"the registry's token service gave no token (HTTP {resp.status})", realm,
                              "the registry is misconfigured")
        return token

    def fail(self, resp: http.client.HTTPResponse, what: str, which: str, key=None) -> None:
        """Turn a refusal into the contract's error (or :class:`Retry` for 5xx/429)."""
        status = resp.status
        delay = retry_after(resp.getheader(hdr.RETRY_AFTER))
        body = self._drain(resp, key)
        code, message = "", ""
        try:
            err = jsonfile.loads(body)["errors"][0]
            code, message = str(err.get("code", "")), str(err.get("message", ""))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 429 or status >= 500:
            raise Retry(detail, delay)
        host = self.ref.registry
        if status in (401, 403):
            raise RemoteError(f"the registry refused {what} ({detail})", which, LOGIN_HINT.format(host=host))
        if status == 404:
            raise NotFoundError(f"not found in the registry ({detail})", which,
                                "check the repository, tag or digest (`skopeo list-tags docker://REGISTRY/REPO`)")
        if code in ("DIGEST_INVALID", "SIZE_INVALID"):
            raise IntegrityError(f"the registry says the uploaded bytes do not match ({detail})", which,
                                 "a file changed during the push, or the connection corrupted it: run `vmm check`, "
                                 "then push again")
        raise RemoteError(f"the registry refused {what} ({detail})", which, "run the same command again")

    # ------------------------------------------------------------------ operations

    def get_manifest(self) -> tuple[bytes, str | None]:
        """(manifest bytes, Content-Type); a manifest asked for by digest is checked against it."""
        where = str(self.ref)

        def once():
            resp, _ = self.request("GET", self.url(f"manifests/{self.ref.reference}"),
                                   {hdr.ACCEPT: MANIFEST_ACCEPT})
            if resp.status != 200:
                self.fail(resp, "the manifest", where)
            try:
                data = resp.read(MAX_MANIFEST_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                self.conns().drop(self.key)
                raise Retry(f"manifest body: {exc}") from exc
            if not resp.isclosed():
                self._drain(resp)
            return data, (resp.getheader(hdr.CONTENT_TYPE) or "").split(";")[0].strip() or None

        data, ctype = with_retries(once, "fetching the manifest", where)
        if self.ref.digest and digest_of(data) != self.ref.digest:
            raise IntegrityError("the registry's manifest does not match the digest asked for", where,
                                 "the registry is damaged or lying; nothing was installed")
        return data, ctype

    def blob_exists(self, digest: str) -> bool:
        def once():
            resp, _ = self.request("HEAD", self.url(f"blobs/{digest}"), follow=True)
            self._drain(resp)
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            self.fail(resp, "a blob check", f"{self.ref} {digest}")
            return False

        return with_retries(once, "checking a blob", f"{self.ref} {digest}")

    def get_blob_bytes(self, digest: str, size: int, what: str) -> bytes:
        """A small blob (the config), read whole and checked against its digest and size."""
        if size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{what} blob too large", f"{digest} ({size} bytes)", "not a model artifact vmm reads")

        def once():
            resp, url = self.request("GET", self.url(f"blobs/{digest}"), follow=True)
            if resp.status != 200:
                self.fail(resp, f"the {what} blob", f"{self.ref} {digest}", host_key(url))
            try:
                data = resp.read(size + 1)
            except (OSError, http.client.HTTPException) as exc:
                self.conns().drop(host_key(url))
                raise Retry(f"blob body: {exc}") from exc
            if not resp.isclosed():
                self._drain(resp, host_key(url))
            return data

        data = with_retries(once, f"fetching the {what}", str(self.ref))
        if len(data) != size or digest_of(data) != digest:
            raise IntegrityError(f"the registry's {what} blob does not match its digest", f"{self.ref} {digest}",
                                 "the registry is damaged or lying; nothing was installed")
        return data

    def fetch_blob(self, digest: str, start: int, end: int, size: int, sink: Callable[[memoryview], None],
                   restart: Callable[[], None]) -> None:
        """Stream bytes [start, end) of a ``size``-byte blob into ``sink`` (one try; raises
        :class:`Retry`). A registry that ignores the Range (200 with the whole blob) makes the
        caller ``restart``: it either takes the whole blob from offset 0 or raises."""
        whole = start == 0 and end == size
        headers = {} if whole else {hdr.RANGE: f"bytes={start}-{end - 1}"}
        resp, url = self.request("GET", self.url(f"blobs/{digest}"), headers, follow=True)
        key = host_key(url)
        if resp.status == 206 and not whole:
            crange = resp.getheader(hdr.CONTENT_RANGE) or ""
            if not crange.startswith(f"bytes {start}-{end - 1}/"):
                self._drain(resp, key)
                raise Retry(f"unexpected Content-Range {crange!r}")
        elif resp.status in (200, 206):
            if not whole:
                try:
                    restart()
                except BaseException:
                    resp.close()
                    self.conns().drop(key)
                    raise
                start, end = 0, size
        elif resp.status == 416 and start >= size:
            self._drain(resp, key)
            return
        else:
            self.fail(resp, "a blob download", f"{self.ref} {digest}", key)
        want = end - start
        buf = bytearray(min(READ_BLOCK, max(want, 1)))
        view = memoryview(buf)
        got = 0
        try:
            while got < want:
                n = resp.readinto(view[:min(len(buf), want - got)])
                if not n:
                    break
                sink(view[:n])
                got += n
        except (OSError, http.client.HTTPException) as exc:
            self.conns().drop(key)
            raise Retry(f"{type(exc).__name__} mid-body") from exc
        if got != want:
            self.conns().drop(key)
            raise Retry("connection closed mid-body")
        if not resp.isclosed():
            extra = resp.read(1) if end == size else b""
            if extra:
                self.conns().drop(key)
                raise IntegrityError("the registry sent more bytes than the layer's size", f"{self.ref} {digest}",
                                     "the registry is damaged or lying; nothing was installed")
            if not resp.isclosed():
                resp.close()
                self.conns().drop(key)

    def upload_blob(self, digest: str, size: int, path: str | None = None, data: bytes | None = None,
                    mount_from: str | None = None) -> str:
        """Upload one blob (monolithic: POST then PUT); "mounted" when a cross-repository mount
        made it unnecessary, else "uploaded". One try: raises :class:`Retry` on transient failures."""
        where = f"{self.ref} {digest}"
        query = f"?mount={digest}&from={mount_from}" if mount_from else ""
        resp, _ = self.request("POST", self.url(f"blobs/uploads/{query}"), {hdr.CONTENT_LENGTH: "0"}, body=b"")
        if resp.status == 201 and mount_from:
            self._drain(resp)
            return "mounted"
        if resp.status != 202:
            self.fail(resp, "the upload", where)
        location = resp.getheader(hdr.LOCATION)
        self._drain(resp)
        if not location:
            raise RemoteError("the registry started an upload without a Location", where, "the registry is misconfigured")
        url = urljoin(self.base + "/", location)
        # A registry may hand uploads to another host: _send gives the credentials only to its own.
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        headers = {hdr.CONTENT_TYPE: "application/octet-stream"}
        if path is not None:
            resp, _ = self.request("PUT", url, headers, body_path=path, body_size=size)
        else:
            resp, _ = self.request("PUT", url, {**headers, hdr.CONTENT_LENGTH: str(len(data or b""))}, body=data or b"")
        if resp.status not in (201, 204):
            self.fail(resp, "the upload", where, host_key(url))
        self._drain(resp, host_key(url))
        return "uploaded"

    def put_manifest(self, manifest: bytes, media_type: str, tag: str) -> str:
        """PUT the manifest under ``tag``; the digest the registry recorded."""
        where = f"{self.ref.registry}/{self.ref.repository}:{tag}"

        def once():
            resp, _ = self.request("PUT", self.url(f"manifests/{tag}"),
                                   {hdr.CONTENT_TYPE: media_type, hdr.CONTENT_LENGTH: str(len(manifest))}, body=manifest)
            if resp.status not in (200, 201):
                self.fail(resp, "the manifest", where)
            digest = resp.getheader(hdr.DOCKER_CONTENT_DIGEST) or ""
            self._drain(resp)
            return digest

        return with_retries(once, "putting the manifest", where)
