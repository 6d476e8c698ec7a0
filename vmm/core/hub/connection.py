"""HTTP for the transfer engine: keep-alive connections per worker and one ``Range`` request
streamed into a callback.

Redirects are followed by hand and the Authorization header goes only to the endpoint's own
host (a CDN never sees the token); only http(s) redirects are followed (any other scheme or a
malformed Location is a RemoteError at once). A CDN URL's signature expiry is read from the
URL (:func:`signed_url_deadline`) so an expired one is not used; a CDN refusing one (401/403)
raises :class:`Retry` and the next try asks the endpoint again, while 401/403 from the
endpoint itself means "log in". The connection's timeout is the stall deadline: a read that
waits longer raises :class:`Retry`. Retryable failures (5xx, 429, resets, stalls, short
bodies) raise :class:`Retry`; the others raise the contract's :class:`VmmError`.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urljoin, urlsplit

from vmm.core.errors import IntegrityError, NotFoundError, RemoteError
from vmm.core.hub.client import LOGIN_HINT
from vmm.core import http_names as hdr

RETRY_AFTER_CAP_S = 60.0
READ_BLOCK = 1024 * 1024            # TLS / chunked bodies: one readinto at a time
READ_BLOCK_WAITALL = 4 * 1024 * 1024  # plain TCP: one recv(MSG_WAITALL) per this many bytes
MAX_REDIRECTS = 6
SIGNED_URL_MARGIN_S = 5.0           # a signed URL is renewed this long before it expires (at most)

HostKey = tuple[str, str, int]


class Retry(Exception):
    """A failure worth retrying (after ``delay`` seconds when the server said so).

    ``free``: the failure says nothing about the link (a cached signed URL that expired):
    the caller retries at once without counting an attempt."""

    def __init__(self, why: str, delay: float | None = None, free: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.delay = delay
        self.free = free


def host_key(url: str) -> HostKey:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _http_date(value: str | None) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(RETRY_AFTER_CAP_S, float(value)))
    except ValueError:
        when = _http_date(value)
        return None if when is None else max(0.0, min(RETRY_AFTER_CAP_S, when - time.time()))


def signed_url_deadline(url: str, server_date: str | None, now: float | None = None) -> float | None:
    """The ``time.monotonic()`` after which the signed ``url`` no longer works, or None when
    it does not say.

    Two query formats are read, the two the Hub's CDN (cas-bridge.xethub.hf.co) has sent:
    AWS SigV4 presigned URLs (``X-Amz-Date=20260130T083308Z&X-Amz-Expires=3600``, the
    lifetime counted from the signing time) and CloudFront signed URLs (``Expires=<epoch>``
    with ``Policy``/``Signature``/``Key-Pair-Id``). Both are server clocks: the lifetime left
    is measured against the redirect's own ``Date`` header when it has one, so a skewed local
    clock does not matter; the answer is on the local monotonic clock."""
    from datetime import datetime, timezone

    query = parse_qs(urlsplit(url).query)
    issued_at = _http_date(server_date)
    if issued_at is None:
        issued_at = time.time()
    expires_at = None
    try:
        if "X-Amz-Expires" in query and "X-Amz-Date" in query:
            signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            expires_at = signed.timestamp() + float(query["X-Amz-Expires"][0])
        if "Expires" in query:
            cloudfront = float(query["Expires"][0])
            expires_at = cloudfront if expires_at is None else min(expires_at, cloudfront)
    except (ValueError, OverflowError):
        return None
    if expires_at is None:
        return None
    lifetime = expires_at - issued_at
    # HTTP dates and epoch expiries have 1 s resolution: let go of a URL a little early.
    margin = min(SIGNED_URL_MARGIN_S, max(0.0, lifetime) * 0.1)
    return (time.monotonic() if now is None else now) + lifetime - margin


class Connections:
    """One keep-alive connection per (scheme, host, port), used by one worker thread.

    ``abort()`` may be called from another thread: it shuts the sockets down so that a worker
    blocked in ``recv`` returns at once (used when the pull stops)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._conns: dict[HostKey, http.client.HTTPConnection] = {}
        self._waitall: set[HostKey] = set()
        self._lock = threading.Lock()

    def get(self, key: HostKey) -> http.client.HTTPConnection:
        with self._lock:
            conn = self._conns.get(key)
            if conn is None:
                scheme, host, port = key
                cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
                conn = cls(host, port, timeout=self.timeout)
                self._conns[key] = conn
        if conn.sock is None:
            conn.connect()
            self._tune(key, conn)
        return conn

    def raw_socket(self, key: HostKey) -> socket.socket | None:
        """The plain blocking socket of ``key``'s connection when it can use MSG_WAITALL."""
        conn = self._conns.get(key)
        return conn.sock if conn is not None and key in self._waitall else None

    def _tune(self, key: HostKey, conn: http.client.HTTPConnection) -> None:
        """Plain TCP: blocking socket with kernel-side timeouts, so a body read can use
        ``recv_into(MSG_WAITALL)``: one syscall (and one GIL round trip) per megabytes instead
        of one per ~64 KiB segment. Python's own timeout makes the fd non-blocking, which
        defeats MSG_WAITALL. TLS sockets keep Python's timeout."""
        self._waitall.discard(key)
        sock = conn.sock
        if sock is None or not isinstance(sock, socket.socket) or hasattr(sock, "cipher"):
            return
        try:
            seconds = int(self.timeout)
            timeval = struct.pack("ll", seconds, int((self.timeout - seconds) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock.settimeout(None)
            self._waitall.add(key)
        except (OSError, struct.error):
            sock.settimeout(self.timeout)

    def drop(self, key: HostKey) -> None:
        with self._lock:
            conn = self._conns.pop(key, None)
            self._waitall.discard(key)
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        with self._lock:
            socks = [c.sock for c in self._conns.values() if c.sock is not None]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
            self._waitall.clear()
        for conn in conns:
            conn.close()


class RangeRequest:
    """``GET url`` for bytes [start, end) of one file; the body goes to ``sink(view)`` in
    blocks as it arrives. ``label`` names the file in errors; ``size`` is the whole file's
    (it tells a server that ignored Range, answering 200 with the whole file, from a short
    answer). ``redirect`` is a CDN URL the endpoint sent for this file earlier (tried first
    while ``redirect_expires``, a monotonic time, has not passed)."""

    def __init__(self, url: str, start: int, end: int, label: str, whole_file: bool,
                 size: int | None = None) -> None:
        self.url = url
        self.start = start
        self.end = end
        self.label = label
        self.whole_file = whole_file    # the range is the whole file: a plain 200 is fine
        self.size = size if size is not None else (end if whole_file else None)
        self.redirect: str | None = None   # a CDN URL to reuse for the next range
        self.redirect_expires: float | None = None


def _redirect_target(base: str, location: str | None, label: str) -> str:
    """Where a 3xx sends us; a redirect that can never work is a RemoteError at once."""
    try:
        target = urljoin(base, (location or "").strip())
        parts = urlsplit(target)
        _ = parts.port                  # raises ValueError on a malformed port
    except ValueError:
        parts = None
    if not location or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = repr((location or "")[:120])
        if parts is not None and location and parts.scheme not in ("http", "https", ""):
            raise RemoteError(f"the server redirected the download to a non-HTTP URL ({parts.scheme}:)",
                              f"{label} -> {shown}",
                              "vmm follows only http(s) redirects; check HF_ENDPOINT or the mirror")
        raise RemoteError("the server sent a malformed redirect", f"{label} (Location {shown})",
                          "check HF_ENDPOINT or the mirror")
    return target


def _content_length(resp) -> int | None:
    try:
        value = int(resp.getheader(hdr.CONTENT_LENGTH) or "")
    except ValueError:
        return None
    return value if value >= 0 else None


def fetch_range(conns: Connections, req: RangeRequest, auth: tuple[HostKey, str | None],
                buf: bytearray, sink: Callable[[memoryview], None], stop: threading.Event,
                whole: Callable[[], Callable[[memoryview], None] | None] | None = None) -> str:
    """Fetch ``req`` into ``sink``; raise :class:`Retry` or a VmmError.

    Returns ``"range"`` when the range arrived. A server that ignores Range (200 with the
    whole file) is, when ``whole`` is given, asked ``whole()`` for a sink for the whole body
    from offset 0: the body goes there and ``"whole"`` is returned; when ``whole()`` answers
    None (another worker streams that file) the answer is dropped and ``"handed-off"`` is
    returned. Without ``whole`` only a whole-file range may be answered with 200."""
    endpoint_host, token = auth
    if req.redirect and req.redirect_expires is not None and time.monotonic() >= req.redirect_expires:
        req.redirect = None               # its signature has expired: ask the endpoint again
    url = req.redirect or req.url
    cached = req.redirect is not None     # a CDN URL from an earlier request
    redirected = cached
    length = req.end - req.start
    for _hop in range(MAX_REDIRECTS):
        key = host_key(url)
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        headers = {hdr.RANGE: f"bytes={req.start}-{req.end - 1}", hdr.ACCEPT_ENCODING: "identity",
                   hdr.USER_AGENT: hdr.USER_AGENT_VALUE}
        if token and key == endpoint_host:
            headers[hdr.AUTHORIZATION] = f"Bearer {token}"
        try:
            conn = conns.get(key)
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conns.drop(key)
            req.redirect = None
            raise Retry(_why(exc, conns.timeout, "")) from exc
        status = resp.status
        if status in (301, 302, 303, 307, 308):
            location = resp.getheader(hdr.LOCATION)
            resp.read()
            url = _redirect_target(url, location, req.label)
            redirected, cached = True, False
            if host_key(url) != endpoint_host:
                req.redirect = url
                req.redirect_expires = signed_url_deadline(url, resp.getheader(hdr.DATE))
            continue
        if status == 206:
            crange = resp.getheader(hdr.CONTENT_RANGE) or ""
            if not crange.startswith(f"bytes {req.start}-{req.end - 1}/"):
                resp.close()
                conns.drop(key)
                raise Retry(f"unexpected Content-Range {crange!r}")
            _read_body(conns, key, resp, length, buf, sink, stop)
            return "range"
        if status == 200:
            return _whole_body(conns, key, resp, req, buf, sink, stop, whole)
        _refuse(conns, key, resp, req, redirected, cached)
    raise RemoteError("too many redirects", req.label, "check HF_ENDPOINT")


def _whole_body(conns: Connections, key: HostKey, resp, req: RangeRequest, buf: bytearray,
                sink: Callable[[memoryview], None], stop: threading.Event,
                whole: Callable[[], Callable[[memoryview], None] | None] | None) -> str:
    """A 200: the server sent the whole file, whatever Range asked for."""
    sent = _content_length(resp)
    size = req.size
    if sent is None or size is None or sent != size:
        resp.close()
        conns.drop(key)
        raise Retry(f"HTTP 200 with {sent} bytes for a {size}-byte file")
    if whole is None:
        if not req.whole_file:
            resp.close()
            conns.drop(key)
            raise Retry("server ignored the Range header")
        _read_body(conns, key, resp, size, buf, sink, stop)
        return "range"
    stream = sink if req.whole_file else whole()
    if stream is None:
        resp.close()
        conns.drop(key)
        return "handed-off"
    _read_body(conns, key, resp, size, buf, stream, stop)
    return "range" if req.whole_file else "whole"


def _refuse(conns: Connections, key: HostKey, resp, req: RangeRequest, redirected: bool, cached: bool) -> None:
    """Any other answer: raise Retry or the VmmError it means."""
    status = resp.status
    resp.read(64 * 1024)
    if resp.length:
        conns.drop(key)
    req.redirect = None
    if status == 429 or status >= 500:
        raise Retry(f"HTTP {status}", retry_after(resp.getheader(hdr.RETRY_AFTER)))
    if status in (401, 403) and redirected:
        # A CDN refusing a signed URL: it expired (S3/CloudFront answer 403 AccessDenied,
        # "Request has expired") or the CDN's clock runs ahead. The endpoint signs a new one.
        raise Retry(f"the CDN refused the signed URL (HTTP {status})", delay=0 if cached else None, free=cached)
    if status in (401, 403):
        raise RemoteError(f"the Hub refused the download (HTTP {status})", req.label, LOGIN_HINT)
    if status in (404, 410):
        raise NotFoundError(f"file not found on the Hub (HTTP {status})", req.label,
                            "the repo changed during the pull; run the same command again")
    if status == 416:
        raise IntegrityError("the server's file is smaller than its listing says", req.label,
                             "run the same command again later")
    raise RemoteError(f"unexpected HTTP {status} for a file", req.label,
                      "check HF_ENDPOINT or the mirror, then run the same command again")


def _why(exc: BaseException, timeout: float, where: str) -> str:
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        # SO_RCVTIMEO gives EAGAIN (BlockingIOError), Python's own timeout TimeoutError.
        return f"no data for {timeout:g}s: the connection stalled"
    return f"{type(exc).__name__}{where}" if where else f"{type(exc).__name__}: {exc}"


def _read_body(conns: Connections, key: HostKey, resp, length: int, buf: bytearray,
               sink: Callable[[memoryview], None], stop: threading.Event) -> None:
    """Read ``length`` body bytes into ``sink``. A read that waits longer than the
    connection's timeout (the stall deadline) raises Retry: the caller resumes the range
    on a new connection from the last byte written."""
    view = memoryview(buf)
    sock = conns.raw_socket(key)
    raw = sock is not None and not resp.chunked and resp.length == length
    got = 0
    try:
        if raw:
            # Whatever the response's buffered reader already holds, then the socket itself.
            first = resp.fp.read1(min(length, len(buf)))
            if first:
                view[:len(first)] = first
                got = len(first)
                sink(view[:got])
        while got < length:
            if stop.is_set():
                resp.close()
                conns.drop(key)
                raise Retry("stopping")
            want = min(length - got, len(buf), READ_BLOCK_WAITALL if raw else READ_BLOCK)
            if raw:
                # SO_RCVTIMEO (the stall deadline) bounds the wait: some bytes -> a short
                # count, none -> EAGAIN.
                n = sock.recv_into(view[:want], want, socket.MSG_WAITALL)
            else:
                n = resp.readinto(view[:want])
            if not n:
                break
            got += n
            sink(view[:n])
        if raw:
            resp.length = 0
            resp.close()
    except (OSError, http.client.HTTPException) as exc:
        conns.drop(key)
        raise Retry(_why(exc, conns.timeout, " mid-body")) from exc
    if got != length:
        conns.drop(key)
        raise Retry("connection closed mid-body")
    if resp.getheader(hdr.CONNECTION, "").lower() == "close":
        conns.drop(key)
