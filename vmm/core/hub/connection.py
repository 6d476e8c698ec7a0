"""HTTP for the transfer engine: keep-alive connections per worker and one ``Range`` request
streamed into a callback.

Redirects are followed by hand and the Authorization header goes only to the endpoint's own
host (a CDN never sees the token). Retryable failures (5xx, 429, resets, short bodies) raise
:class:`Retry`; the others raise the contract's :class:`VmmError`.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from vmm.core.errors import IntegrityError, NotFoundError, RemoteError
from vmm.core.hub.client import LOGIN_HINT

RETRY_AFTER_CAP_S = 60.0
READ_BLOCK = 1024 * 1024            # TLS / chunked bodies: one readinto at a time
READ_BLOCK_WAITALL = 4 * 1024 * 1024  # plain TCP: one recv(MSG_WAITALL) per this many bytes
MAX_REDIRECTS = 6

HostKey = tuple[str, str, int]


class Retry(Exception):
    """A failure worth retrying (after ``delay`` seconds when the server said so)."""

    def __init__(self, why: str, delay: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.delay = delay


def host_key(url: str) -> HostKey:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(RETRY_AFTER_CAP_S, float(value)))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, min(RETRY_AFTER_CAP_S, parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            return None


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
    blocks as it arrives. ``label`` names the file in errors."""

    def __init__(self, url: str, start: int, end: int, label: str, whole_file: bool) -> None:
        self.url = url
        self.start = start
        self.end = end
        self.label = label
        self.whole_file = whole_file    # the range is the whole file: a plain 200 is fine
        self.redirect: str | None = None   # a CDN URL to reuse for the next range


def fetch_range(conns: Connections, req: RangeRequest, auth: tuple[HostKey, str | None],
                buf: bytearray, sink: Callable[[memoryview], None], stop: threading.Event) -> None:
    """Fetch ``req`` into ``sink``; raise :class:`Retry` or a VmmError."""
    endpoint_host, token = auth
    url = req.url
    length = req.end - req.start
    for _hop in range(MAX_REDIRECTS):
        key = host_key(url)
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        headers = {"Range": f"bytes={req.start}-{req.end - 1}", "Accept-Encoding": "identity",
                   "User-Agent": "vmm"}
        if token and key == endpoint_host:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn = conns.get(key)
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conns.drop(key)
            req.redirect = None
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        status = resp.status
        if status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            resp.read()
            if not location:
                raise Retry(f"HTTP {status} without Location")
            url = urljoin(url, location)
            if host_key(url) != endpoint_host:
                req.redirect = url
            continue
        if status == 206:
            _read_body(conns, key, resp, req, buf, sink, stop)
            return
        _refuse(conns, key, resp, req, length, sink)
        return
    raise RemoteError("too many redirects", req.label, "check HF_ENDPOINT")


def _refuse(conns: Connections, key: HostKey, resp, req: RangeRequest, length: int,
            sink: Callable[[memoryview], None]) -> None:
    """A non-206 answer: a whole small file sent with 200 is accepted; the rest raise."""
    status = resp.status
    body = resp.read(64 * 1024)
    if status == 200 and req.whole_file and int(resp.getheader("Content-Length") or -1) == length:
        # A server that ignores Range for a whole small file: fine.
        if len(body) == length:
            sink(memoryview(body))
            return
        conns.drop(key)
        raise Retry("short body")
    if status == 200:
        conns.drop(key)
        raise Retry("server ignored the Range header")
    req.redirect = None
    if status == 429 or status >= 500:
        raise Retry(f"HTTP {status}", retry_after(resp.getheader("Retry-After")))
    if status in (401, 403):
        raise RemoteError(f"the Hub refused the download (HTTP {status})", req.label, LOGIN_HINT)
    if status == 404:
        raise NotFoundError("file not found on the Hub", req.label,
                            "the repo changed during the pull; run the same command again")
    if status == 416:
        raise IntegrityError("the server's file is smaller than its listing says", req.label,
                             "run the same command again later")
    raise RemoteError(f"unexpected HTTP {status} for a file", req.label, "run the same command again")


def _read_body(conns: Connections, key: HostKey, resp, req: RangeRequest, buf: bytearray,
               sink: Callable[[memoryview], None], stop: threading.Event) -> None:
    length = req.end - req.start
    crange = resp.getheader("Content-Range") or ""
    if not crange.startswith(f"bytes {req.start}-{req.end - 1}/"):
        resp.close()
        conns.drop(key)
        raise Retry(f"unexpected Content-Range {crange!r}")
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
        raise Retry(f"{type(exc).__name__} mid-body") from exc
    if got != length:
        conns.drop(key)
        raise Retry("connection closed mid-body")
    if resp.getheader("Connection", "").lower() == "close":
        conns.drop(key)
