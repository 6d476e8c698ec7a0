"""The transfer engine: parallel, resumable, verified downloads of a Hub repo into the root.

How it works (docs/pull.md has the operator's view):

- Metadata (commit sha, file sizes, sha256 / git blob ids) comes from :mod:`vmm.core.hub.client`.
- Each file to fetch gets a preallocated ``<model>/.vmm/partial/<path>.part`` and a chunk
  map ``.part.json`` rewritten (temp + rename) whenever a chunk lands, so a run killed with
  SIGKILL resumes without fetching finished chunks again.
- Workers (threads, one keep-alive ``http.client`` connection per host each) fetch
  ``Range`` chunks of ``{endpoint}/{repo}/resolve/{commit}/{path}``; redirects are followed
  by hand and the Authorization header goes only to the endpoint's own host.
- Hashing overlaps the transfer: a per-file hasher thread consumes the contiguous prefix of
  finished chunks (re-reading them from the page cache), so a resumed file is rehashed from
  disk as well. sha256 for LFS files, git blob sha1 for the others.
- A mismatch discards that file's partial data and fetches it again (bounded), then
  IntegrityError (exit 5). Final files appear by atomic rename; the manifest is written last.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import http.client
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from vmm.core.model import formats
from vmm.core import names, settings
from vmm.core.store import local, locking, manifests, paths
from vmm.core.errors import (
    DiskSpaceError,
    IntegrityError,
    Interrupted,
    NotFoundError,
    RemoteError,
    UsageError,
    VmmError,
)
from vmm.core.hub.client import LOGIN_HINT, RemoteFile, RepoSnapshot, fetch_snapshot

# Defaults measured with bench/pull.py (docs/benchmarks.md, "## pull").
DEFAULT_WORKERS = 8
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
CHUNK_ATTEMPTS = 8              # per chunk, for retryable failures
FILE_ATTEMPTS = 3               # whole-file refetches after a hash mismatch
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0
RETRY_AFTER_CAP_S = 60.0
SOCKET_TIMEOUT_S = 30.0
DISK_MARGIN_BYTES = 64 * 1024 * 1024
REUSE_MIN_BYTES = 1024 * 1024    # smaller files are cheaper to fetch than to search the root for
READ_BLOCK = 1024 * 1024
READ_BLOCK_WAITALL = 4 * 1024 * 1024
WRITE_BLOCK = 4 * 1024 * 1024

PARTIAL_DIR = "partial"

# Duplicate formats skipped in a safetensors repo unless --all-files.
DUPLICATE_PATTERNS = (
    "pytorch_model*.bin", "pytorch_model*.bin.index.json", "*.pth", "*.pt", "consolidated*",
    "original/*", "tf_model*.h5", "flax_model*.msgpack", "*.ckpt", "onnx/*", "openvino/*",
    "*.onnx", "*.onnx_data", "coreml/*", "rust_model.ot",
)


@dataclass
class PullResult:
    name: str
    path: str
    revision: str                 # the commit sha
    files: int
    bytes_downloaded: int
    bytes_total: int
    verified: bool
    kept_files: int = 0
    fetched_files: list[str] = field(default_factory=list)
    previous_revision: str | None = None
    quant: str | None = None
    reused_files: list[str] = field(default_factory=list)   # linked from the HF cache or the root
    chat_template: str | None = None     # where vLLM's template comes from after the pull
    chat_template_written: bool = False  # vmm wrote its family template (the repo has none)


@dataclass
class ProgressUpdate:
    bytes_done: int               # bytes of the selected files present and fetched so far
    bytes_total: int
    bytes_downloaded: int         # bytes transferred by this run
    files_done: int
    files_total: int
    current: str | None = None
    message: str | None = None    # a one-off note (waiting for a lock, retrying)
    finished: bool = False


ProgressCallback = Callable[[ProgressUpdate], None]


# --------------------------------------------------------------------------- selection

def _matches(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def select_files(files: list[RemoteFile], quant: str | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None, all_files: bool = False,
                 repo_id: str = "") -> tuple[list[RemoteFile], str | None]:
    """The files a pull fetches, and the GGUF quantization chosen (if any)."""
    include, exclude = list(include or []), list(exclude or [])
    chosen_quant = None
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    selected = list(files)
    if ggufs and not all_files:
        quants = sorted({formats.gguf_quant_of(f.path) or f.path for f in ggufs})
        if quant:
            wanted = quant.upper()
            picked = [f for f in ggufs if (formats.gguf_quant_of(f.path) or "").upper() == wanted]
            if not picked:
                raise NotFoundError("quantization not in the repo", f"{repo_id}:{quant}",
                                    f"choose one of: {', '.join(quants)}")
            chosen_quant = wanted
        elif include:
            picked = ggufs
        elif len(quants) > 1:
            raise UsageError("the GGUF repo has several quantizations", repo_id,
                             f"choose one with {repo_id}:QUANT, one of: {', '.join(quants)}")
        else:
            picked = ggufs
            chosen_quant = formats.gguf_quant_of(ggufs[0].path)
        keep = {f.path for f in picked}
        selected = [f for f in files if not f.path.lower().endswith(".gguf") or f.path in keep]
    elif quant:
        raise UsageError("':QUANT' applies to GGUF repos only", f"{repo_id}:{quant}",
                         "drop the ':QUANT' suffix")
    has_safetensors = any(f.path.endswith(".safetensors") for f in files)
    if has_safetensors and not all_files:
        selected = [f for f in selected if not _matches_dup(f.path)]
    if include:
        selected = [f for f in selected if _matches(f.path, include)]
    if exclude:
        selected = [f for f in selected if not _matches(f.path, exclude)]
    return selected, chosen_quant


def _matches_dup(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], p)
               for p in DUPLICATE_PATTERNS) or path.startswith("original/")


# --------------------------------------------------------------------------- hashing

def expected_digest(f: RemoteFile | manifests.ManifestFile) -> tuple[str, str]:
    """(algorithm, hex digest) that proves a file: sha256 for LFS files, else git blob sha1."""
    if f.sha256:
        return "sha256", f.sha256
    if f.git_sha1:
        return "git-sha1", f.git_sha1
    return "size", ""


def new_hasher(algorithm: str, size: int):
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "git-sha1":
        return hashlib.sha1(b"blob %d\0" % size)
    return None


def hash_file(path: Path, algorithm: str, size: int) -> str:
    hasher = new_hasher(algorithm, size)
    if hasher is None:
        return ""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(8 * 1024 * 1024)
            if not block:
                break
            hasher.update(block)
    return hasher.hexdigest()


# --------------------------------------------------------------------------- HTTP

class _Retry(Exception):
    def __init__(self, why: str, delay: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.delay = delay


class _Connections:
    """One keep-alive connection per (scheme, host, port), owned by one worker thread."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def get(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conn = self.conns.get(key)
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(host, port, timeout=self.timeout)
            self.conns[key] = conn
        if conn.sock is None:
            conn.connect()
            self._tune(conn)
        return conn

    def _tune(self, conn: http.client.HTTPConnection) -> None:
        """Plain TCP: blocking socket with kernel-side timeouts, so a body read can use
        ``recv_into(MSG_WAITALL)``: one syscall (and one GIL round trip) per megabytes instead
        of one per ~64 KiB segment. Python's own timeout makes the fd non-blocking, which
        defeats MSG_WAITALL. TLS sockets keep Python's timeout."""
        sock = conn.sock
        if sock is None or not isinstance(sock, socket.socket) or hasattr(sock, "cipher"):
            return
        try:
            seconds = int(self.timeout)
            timeval = struct.pack("ll", seconds, int((self.timeout - seconds) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock.settimeout(None)
            conn._vmm_waitall = True  # type: ignore[attr-defined]
        except (OSError, AttributeError, struct.error):
            sock.settimeout(self.timeout)

    def drop(self, scheme: str, host: str, port: int) -> None:
        conn = self.conns.pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def _host_key(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _retry_after(value: str | None) -> float | None:
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


# --------------------------------------------------------------------------- one file's state

class _FileJob:
    """A file being fetched: its partial file, chunk map and overlapping hasher."""

    def __init__(self, engine: _Engine, rf: RemoteFile, final: Path) -> None:
        self.engine = engine
        self.rf = rf
        self.final = final
        rel = rf.path
        self.part = engine.partial_dir / (rel + ".part")
        self.map_path = engine.partial_dir / (rel + ".part.json")
        self.chunk_size = engine.chunk_size
        self.nchunks = -(-rf.size // self.chunk_size)   # 0 for an empty file
        self.algorithm, self.expected = expected_digest(rf)
        self.lock = threading.Condition()
        self.map_lock = threading.Lock()
        self.done: set[int] = set()
        self.hashed_upto = 0          # chunks hashed so far (contiguous prefix)
        self.hasher = new_hasher(self.algorithm, rf.size)
        self.fd = -1
        self.redirect: str | None = None
        self.failed: BaseException | None = None
        self.attempt = 0
        self.pending = 0

    # ---- partial state
    def open(self) -> int:
        """Open (or create) the partial file and load its chunk map; return bytes already there."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        state = None
        try:
            state = json.loads(self.map_path.read_text())
        except (OSError, ValueError):
            state = None
        ok = (isinstance(state, dict) and state.get("size") == self.rf.size
              and state.get("expected") == self.expected and state.get("chunk_size") == self.chunk_size
              and self.part.exists() and self.part.stat().st_size == self.rf.size)
        if ok:
            self.done = {int(i) for i in state.get("done", []) if 0 <= int(i) < self.nchunks}
        else:
            self.done = set()
            try:
                self.part.unlink()
            except FileNotFoundError:
                pass
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o666)   # the umask applies
        try:
            if os.fstat(self.fd).st_size != self.rf.size:
                os.ftruncate(self.fd, self.rf.size)
        except OSError as exc:
            self.close()
            raise _disk_error(exc, self.part) from exc
        self._save_map()
        return sum(self.chunk_len(i) for i in self.done)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.rf.size - index * self.chunk_size)

    def _save_map(self) -> None:
        with self.lock:
            done = sorted(self.done)
        doc = {"path": self.rf.path, "size": self.rf.size, "chunk_size": self.chunk_size,
               "expected": self.expected, "algorithm": self.algorithm, "done": done}
        tmp = self.map_path.with_name(self.map_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.map_path)
        except OSError as exc:
            raise _disk_error(exc, self.map_path) from exc

    def missing_chunks(self) -> list[int]:
        return [i for i in range(self.nchunks) if i not in self.done]

    def chunk_done(self, index: int) -> None:
        with self.lock:
            self.done.add(index)
            self.lock.notify_all()
        # The map is saved outside the hashing lock: a slow rename must not stall the hasher.
        with self.map_lock:
            self._save_map()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        for path in (self.part, self.map_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # ---- hashing, overlapped with the transfer
    def hash_available(self, until_complete: bool, stop: threading.Event) -> bool:
        """Hash the contiguous prefix of finished chunks; True once the whole file is hashed."""
        while True:
            with self.lock:
                while self.hashed_upto not in self.done and self.hashed_upto < self.nchunks:
                    if not until_complete or stop.is_set() or self.failed is not None:
                        return False
                    self.lock.wait(0.2)
                if self.hashed_upto >= self.nchunks:
                    return True
                index = self.hashed_upto
            if self.hasher is not None:
                start = index * self.chunk_size
                length = self.chunk_len(index)
                pos = 0
                while pos < length:
                    block = os.pread(self.fd, min(8 << 20, length - pos), start + pos)
                    if not block:
                        break
                    self.hasher.update(block)
                    pos += len(block)
            with self.lock:
                self.hashed_upto = index + 1

    def digest(self) -> str:
        return self.hasher.hexdigest() if self.hasher is not None else ""


def _disk_error(exc: OSError, path: Path) -> VmmError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError("no space left on device while downloading", str(path),
                              "free space and run the same command again; finished chunks are kept")
    return UsageError("cannot write the download", str(path), exc.strerror or str(exc))


# --------------------------------------------------------------------------- the engine

class _Engine:
    def __init__(self, snapshot: RepoSnapshot, model_dir: Path, endpoint: str, token: str | None,
                 workers: int, chunk_size: int, progress: ProgressCallback | None,
                 bytes_total: int, bytes_present: int, files_total: int, files_done: int) -> None:
        self.snapshot = snapshot
        self.model_dir = model_dir
        self.partial_dir = model_dir / paths.META_DIR / PARTIAL_DIR
        self.endpoint = endpoint.rstrip("/")
        self.endpoint_host = _host_key(self.endpoint)
        self.token = token
        self.workers = max(1, workers)
        self.chunk_size = max(64 * 1024, chunk_size)
        self.progress = progress
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.bytes_total = bytes_total
        self.bytes_done = bytes_present
        self.bytes_downloaded = 0
        self.files_total = files_total
        self.files_done = files_done
        self.current: str | None = None
        self.last_report = 0.0
        self.error: BaseException | None = None

    # ---- progress
    def report(self, force: bool = False, message: str | None = None) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and message is None and now - self.last_report < 0.1:
            return
        self.last_report = now
        with self.lock:
            update = ProgressUpdate(self.bytes_done, self.bytes_total, self.bytes_downloaded,
                                    self.files_done, self.files_total, self.current, message)
        self.progress(update)

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_done += n
            self.bytes_downloaded += n
        self.report()

    # ---- one chunk over HTTP
    def url_for(self, job: _FileJob) -> str:
        return (f"{self.endpoint}/{quote(self.snapshot.repo_id, safe='/')}/resolve/"
                f"{quote(self.snapshot.commit, safe='')}/{quote(job.rf.path, safe='/')}")

    def fetch_chunk(self, conns: _Connections, job: _FileJob, index: int, buf: bytearray) -> None:
        start = index * job.chunk_size
        length = job.chunk_len(index)
        url = job.redirect or self.url_for(job)
        for _hop in range(6):
            scheme, host, port = _host_key(url)
            parts = urlsplit(url)
            target = parts.path + ("?" + parts.query if parts.query else "")
            headers = {"Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity",
                       "User-Agent": "vmm"}
            if self.token and (scheme, host, port) == self.endpoint_host:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                conn = conns.get(scheme, host, port)
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conns.drop(scheme, host, port)
                job.redirect = None
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read()
                if not location:
                    raise _Retry(f"HTTP {status} without Location")
                url = urljoin(url, location)
                if _host_key(url) != self.endpoint_host:
                    job.redirect = url
                continue
            if status == 206:
                self._read_body(conns, (scheme, host, port), resp, job, start, length, buf)
                return
            body = resp.read(64 * 1024)
            if status == 200 and job.nchunks == 1 and int(resp.getheader("Content-Length") or -1) == length:
                # A server that ignores Range for a whole small file: fine.
                buf[:len(body)] = body
                if len(body) == length:
                    self._write(job, start, memoryview(buf)[:length])
                    self.add_bytes(length)
                    return
                conns.drop(scheme, host, port)
                raise _Retry("short body")
            if status == 200:
                conns.drop(scheme, host, port)
                raise _Retry("server ignored the Range header")
            job.redirect = None
            if status == 429 or status >= 500:
                raise _Retry(f"HTTP {status}", _retry_after(resp.getheader("Retry-After")))
            if status in (401, 403):
                raise RemoteError(f"the Hub refused the download (HTTP {status})",
                                  f"{self.snapshot.repo_id}/{job.rf.path}", LOGIN_HINT)
            if status == 404:
                raise NotFoundError("file not found on the Hub", f"{self.snapshot.repo_id}/{job.rf.path}",
                                    "the repo changed during the pull; run the same command again")
            if status == 416:
                raise IntegrityError("the server's file is smaller than its listing says",
                                     job.rf.path, "run the same command again later")
            raise RemoteError(f"unexpected HTTP {status} for a file", f"{self.snapshot.repo_id}/{job.rf.path}",
                              "run the same command again")
        raise RemoteError("too many redirects", f"{self.snapshot.repo_id}/{job.rf.path}",
                          "check HF_ENDPOINT")

    def _read_body(self, conns, key, resp, job: _FileJob, start: int, length: int, buf: bytearray) -> None:
        crange = resp.getheader("Content-Range") or ""
        expect = f"bytes {start}-{start + length - 1}/"
        if not crange.startswith(expect):
            resp.close()
            conns.drop(*key)
            raise _Retry(f"unexpected Content-Range {crange!r}")
        view = memoryview(buf)
        got = written = 0
        conn = conns.conns.get(key)
        sock = conn.sock if conn is not None and getattr(conn, "_vmm_waitall", False) else None
        raw = sock is not None and not resp.chunked and resp.length == length
        try:
            if raw:
                # Whatever the response's buffered reader already holds, then the socket itself.
                first = resp.fp.read1(length)
                view[:len(first)] = first
                got = len(first)
                self.add_bytes(got)
                if got == length:
                    self._write(job, start, view[:length])
                    written = got
            while got < length:
                if self.stop.is_set():
                    resp.close()
                    conns.drop(*key)
                    raise _Retry("stopping")
                want = min(length - got, READ_BLOCK_WAITALL if raw else READ_BLOCK)
                if raw:
                    n = sock.recv_into(view[got:got + want], want, socket.MSG_WAITALL)
                else:
                    n = resp.readinto(view[got:got + want])
                if not n:
                    break
                got += n
                self.add_bytes(n)
                # Write what arrived while the kernel keeps receiving the rest of the chunk.
                if got - written >= WRITE_BLOCK or got == length:
                    self._write(job, start + written, view[written:got])
                    written = got
            if raw:
                resp.length = 0
                resp.close()
        except (OSError, http.client.HTTPException) as exc:
            conns.drop(*key)
            self.add_bytes(-got)
            with self.lock:
                self.bytes_downloaded += got   # the bytes did cross the wire
            raise _Retry(f"{type(exc).__name__} mid-body") from exc
        if got != length:
            conns.drop(*key)
            self.add_bytes(-got)
            with self.lock:
                self.bytes_downloaded += got
            raise _Retry("connection closed mid-body")
        if resp.getheader("Connection", "").lower() == "close":
            conns.drop(*key)
        if written < length:
            self._write(job, start + written, view[written:length])

    def _write(self, job: _FileJob, offset: int, data: memoryview) -> None:
        pos = 0
        try:
            while pos < len(data):
                pos += os.pwrite(job.fd, data[pos:], offset + pos)
        except OSError as exc:
            raise _disk_error(exc, job.part) from exc

    # ---- scheduling
    def run(self, jobs: list[_FileJob]) -> None:
        """Fetch every missing chunk of every job; verify and rename each finished file."""
        tasks: list[tuple[_FileJob, int]] = []
        task_lock = threading.Lock()
        for job in jobs:
            for index in job.missing_chunks():
                tasks.append((job, index))
        tasks.reverse()   # pop() from the end: files in order, chunks in order

        hashers: dict[str, threading.Thread] = {}
        finish_lock = threading.Lock()
        remaining = {job.rf.path: len(job.missing_chunks()) for job in jobs}

        def finish(job: _FileJob) -> None:
            """All chunks of ``job`` landed: complete the hash, verify, rename (or requeue)."""
            with _hash_guard(job):
                ok = job.hash_available(True, self.stop)
            if not ok:
                return
            digest = job.digest()
            if job.algorithm != "size" and digest != job.expected:
                job.discard()
                job.attempt += 1
                with self.lock:
                    self.bytes_done -= job.rf.size
                if job.attempt >= FILE_ATTEMPTS:
                    raise IntegrityError(
                        f"hash mismatch after {FILE_ATTEMPTS} downloads ({job.algorithm} {digest[:12]}, "
                        f"expected {job.expected[:12]})", job.rf.path,
                        "the server keeps sending different bytes; try later or another HF_ENDPOINT")
                self.report(message=f"hash mismatch in {job.rf.path}: fetching it again")
                job.hasher = new_hasher(job.algorithm, job.rf.size)
                job.hashed_upto = 0
                job.done = set()
                job.open()
                with task_lock:
                    remaining[job.rf.path] = job.nchunks
                    for index in reversed(range(job.nchunks)):
                        tasks.append((job, index))
                return
            # No fsync per file: it stalls every concurrent writer behind a full writeback of
            # the file (measured: ~160 ms per 512 MiB shard here, and slower pulls overall).
            # The durable record is the manifest (fsynced, written last); after a power cut a
            # torn file fails `vmm check`'s hashes and a new pull repairs it.
            job.close()
            job.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(job.part, job.final)
            try:
                job.map_path.unlink()
            except FileNotFoundError:
                pass
            with self.lock:
                self.files_done += 1
            self.report(force=True)

        def worker() -> None:
            conns = _Connections(SOCKET_TIMEOUT_S)
            buf = bytearray(self.chunk_size)
            try:
                while not self.stop.is_set():
                    with task_lock:
                        if not tasks:
                            return
                        job, index = tasks.pop()
                    self.current = job.rf.path
                    self._fetch_with_retries(conns, job, index, buf)
                    job.chunk_done(index)
                    with task_lock:
                        remaining[job.rf.path] -= 1
                        last = remaining[job.rf.path] == 0
                    if job.nchunks > 1 and job.rf.path not in hashers:
                        with finish_lock:
                            if job.rf.path not in hashers:
                                thread = threading.Thread(target=_hash_loop, args=(job,), daemon=True)
                                hashers[job.rf.path] = thread
                                thread.start()
                    if last:
                        with finish_lock:
                            hashers.pop(job.rf.path, None)
                        finish(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                with self.lock:
                    if self.error is None:
                        self.error = exc
                self.stop.set()
            finally:
                conns.close()

        def _hash_loop(job: _FileJob) -> None:
            # Keeps the hash close behind the transfer; finish() completes it.
            try:
                while not self.stop.is_set() and job.hashed_upto < job.nchunks:
                    with job.lock:
                        if job.hashed_upto not in job.done:
                            job.lock.wait(0.2)
                            continue
                    # Only one thread may feed the hasher at a time.
                    with _hash_guard(job):
                        job.hash_available(False, self.stop)
            except OSError:
                pass

        # Files whose chunks were all on disk already (resume): verify them first.
        for job in jobs:
            if not job.missing_chunks():
                finish(job)
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)
                self.report()
                # A requeue after a mismatch may need workers again.
                if not any(t.is_alive() for t in threads) and tasks and not self.stop.is_set():
                    threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.workers)]
                    for thread in threads:
                        thread.start()
        except KeyboardInterrupt:
            self.stop.set()
            for thread in threads:
                thread.join(5)
            raise Interrupted("interrupted", self.snapshot.repo_id,
                              "run the same command again to resume; finished chunks are kept") from None
        if self.error is not None:
            raise self.error
        self.report(force=True)

    def _fetch_with_retries(self, conns: _Connections, job: _FileJob, index: int, buf: bytearray) -> None:
        for attempt in range(CHUNK_ATTEMPTS):
            try:
                self.fetch_chunk(conns, job, index, buf)
                return
            except _Retry as retry:
                if self.stop.is_set():
                    raise Interrupted("stopped", job.rf.path, "run the same command again") from None
                if attempt == CHUNK_ATTEMPTS - 1:
                    raise RemoteError(f"download failed after {CHUNK_ATTEMPTS} attempts ({retry.why})",
                                      f"{self.snapshot.repo_id}/{job.rf.path}",
                                      "check the network and run the same command again to resume") from None
                delay = retry.delay
                if delay is None:
                    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt) * (0.5 + random.random())
                self.report(message=f"retrying {job.rf.path} in {delay:.1f}s ({retry.why})")
                self.stop.wait(delay)


_HASH_GUARDS_LOCK = threading.Lock()


def _hash_guard(job: _FileJob) -> threading.Lock:
    with _HASH_GUARDS_LOCK:
        guard = getattr(job, "_guard", None)
        if guard is None:
            guard = threading.Lock()
            job._guard = guard  # type: ignore[attr-defined]
        return guard


# --------------------------------------------------------------------------- the pull

def _local_ok(path: Path, rf: RemoteFile, recorded: dict[str, manifests.ManifestFile], trusted: bool) -> bool:
    """Is the file at ``path`` already the one the Hub lists? Trust the manifest's record of a
    verified hash when it matches the Hub's; otherwise hash what is on disk."""
    try:
        if not path.is_file() or path.stat().st_size != rf.size:
            return False
    except OSError:
        return False
    algorithm, expected = expected_digest(rf)
    old = recorded.get(rf.path)
    if trusted and old is not None and old.size == rf.size and expected_digest(old) == (algorithm, expected):
        return True
    if algorithm == "size":
        return True
    return hash_file(path, algorithm, rf.size) == expected


def download_model_to_path(model_name: str, model_path: Path | None = None, *, root: Path | None = None,
                           include: list[str] | None = None, exclude: list[str] | None = None,
                           revision: str | None = None, all_files: bool = False, offline: bool | None = None,
                           wait: bool = True, workers: int = DEFAULT_WORKERS,
                           chunk_size: int = DEFAULT_CHUNK_SIZE, progress: ProgressCallback | None = None,
                           endpoint: str | None = None, token: str | None = None) -> PullResult:
    """Pull ``model_name`` (``org/name[@rev][:QUANT]``) into ``model_path`` (default
    ``<root>/org--name``): resumable, parallel, verified; manifest written last."""
    ref = names.parse_model_name(model_name)
    root = settings.models_root(root)
    if model_path is None:
        model_path = names.get_model_path_from_name(ref.repo_id, root)
    model_dir = Path(model_path)
    want_revision = revision or ref.revision
    if revision and ref.revision and revision != ref.revision:
        raise UsageError("two different revisions given", f"@{ref.revision} and --revision {revision}",
                         "give one")
    offline = settings.offline() if offline is None else offline
    if workers < 1 or workers > 64:
        raise UsageError("--workers must be between 1 and 64", str(workers), "pick e.g. 8")
    if chunk_size < 64 * 1024:
        raise UsageError("--chunk-size must be at least 64KiB", str(chunk_size), "pick e.g. 16MiB")
    local.ensure_root(root)

    def on_wait(who: str) -> None:
        if progress is not None:
            progress(ProgressUpdate(0, 0, 0, 0, 0, message=f"waiting for the lock held by {who}"))

    from vmm.core.model import templates

    with locking.model_lock(root, model_dir.name, "pull", wait=wait, on_wait=on_wait):
        operator_text = templates.operator_template(model_dir) if model_dir.is_dir() else None
        result = _pull_locked(ref, model_dir, want_revision, include, exclude, all_files, offline,
                              workers, chunk_size, progress, endpoint, token)
        try:
            setup = templates.after_pull(model_dir, ref.repo_id, operator_text)
        except VmmError as exc:
            # The files are what the Hub holds and verified; a template that cannot be
            # resolved (a broken config or GGUF header upstream) is for `vmm check` to report.
            result.chat_template = f"unresolved ({exc.what})"
        else:
            result.chat_template = setup.source if setup.action == "kept" else f"family {setup.family}"
            result.chat_template_written = setup.action == "written"
        manifests.touch_usage(model_dir, "pull")
        return result


def _pull_locked(ref: names.ModelRef, model_dir: Path, want_revision: str | None, include, exclude,
                 all_files: bool, offline: bool, workers: int, chunk_size: int,
                 progress: ProgressCallback | None, endpoint: str | None, token: str | None) -> PullResult:
    old = manifests.read_manifest(model_dir) if model_dir.exists() else None
    if offline:
        return _offline_result(ref, model_dir, old, want_revision)
    endpoint = (endpoint or settings.hub_endpoint()).rstrip("/")
    token = token if token is not None else settings.hub_token()
    snapshot = fetch_snapshot(ref.repo_id, want_revision or "main", endpoint=endpoint, token=token)
    selected, quant = select_files(snapshot.files, ref.quant, include, exclude, all_files, ref.repo_id)
    if not selected:
        raise NotFoundError("no files to pull", f"{ref.repo_id}@{snapshot.commit[:12]}",
                            "check --include/--exclude or the quantization")
    targets = {rf.path: names.safe_repo_path(model_dir, rf.path) for rf in selected}

    recorded = {f.path: f for f in (old.files if old else [])}
    keep, fetch = [], []
    for rf in selected:
        (keep if _local_ok(targets[rf.path], rf, recorded, trusted=old is not None) else fetch).append(rf)

    reused = _reuse_local_copies(ref.repo_id, snapshot.commit, fetch, targets, model_dir)
    if reused:
        keep += [rf for rf in fetch if rf.path in reused]
        fetch = [rf for rf in fetch if rf.path not in reused]
    bytes_total = sum(rf.size for rf in selected)
    present = sum(rf.size for rf in keep)
    engine_jobs: list[_FileJob] = []
    downloaded = 0
    if fetch:
        model_dir.mkdir(parents=True, exist_ok=True)
        engine = _Engine(snapshot, model_dir, endpoint, token, workers, chunk_size, progress,
                         bytes_total, present, len(selected), len(keep))
        # Disk: bytes still needed (minus chunks already on disk) against free space.
        have_partial = 0
        for rf in fetch:
            job = _FileJob(engine, rf, targets[rf.path])
            engine_jobs.append(job)
            have_partial += _partial_bytes(job)
        needed = sum(rf.size for rf in fetch) - have_partial
        free = local.free_bytes(model_dir)
        if needed + DISK_MARGIN_BYTES > free:
            raise DiskSpaceError(
                f"not enough disk space: {needed} bytes needed (+{DISK_MARGIN_BYTES} margin), {free} free",
                str(model_dir), "free space or pull to another --root")
        try:
            for job in engine_jobs:
                engine.bytes_done += job.open()
            engine.report(force=True)
            engine.run(engine_jobs)
        finally:
            for job in engine_jobs:
                job.close()
        downloaded = engine.bytes_downloaded
    # Files of the previous revision that the new one no longer has: remove them.
    new_paths = {rf.path for rf in snapshot.files}
    if old is not None:
        for f in old.files:
            if f.path not in new_paths:
                try:
                    names.safe_repo_path(model_dir, f.path).unlink()
                except (OSError, IntegrityError):
                    pass
    manifest = manifests.Manifest(
        repo_id=ref.repo_id, revision=want_revision or "main", commit=snapshot.commit, quant=quant,
        files=[manifests.ManifestFile(rf.path, rf.size, rf.sha256, rf.git_sha1) for rf in selected],
        pulled_at=time.time())
    previous = None
    if old is not None:
        manifest.last_used, manifest.use_counts = old.last_used, dict(old.use_counts)
        manifest.pinned, manifest.extra = old.pinned, dict(old.extra)
        manifest.previous_revisions = list(old.previous_revisions)
        if old.commit and old.commit != snapshot.commit:
            manifest.previous_revisions.append(old.commit)
            previous = old.commit
    manifests.write_manifest(model_dir, manifest)
    _cleanup_partial(model_dir)
    if progress is not None:
        progress(ProgressUpdate(bytes_total, bytes_total, downloaded, len(selected), len(selected),
                                finished=True))
    return PullResult(name=ref.repo_id, path=str(model_dir), revision=snapshot.commit, files=len(selected),
                      bytes_downloaded=downloaded, bytes_total=bytes_total, verified=True,
                      kept_files=len(keep), fetched_files=[rf.path for rf in fetch],
                      previous_revision=previous, quant=quant, reused_files=sorted(reused))


def _reuse_local_copies(repo_id: str, commit: str, fetch: list[RemoteFile], targets: dict[str, Path],
                        model_dir: Path) -> dict[str, str]:
    """Files already on this host with the right hash: the Hugging Face cache (any revision
    sharing the blob) or another managed model of the root (LFS files, by sha256). Each
    candidate is re-hashed by the storage helpers before it is hardlinked (or copied) into
    place, so only bytes that are what the Hub lists are reused. {path: "link"|"copy"}."""
    if not fetch:
        return {}
    from vmm.core.store import adopt, dedup

    done: dict[str, str] = {}
    try:
        cached = adopt.find_in_hf_cache(repo_id, commit, fetch)
    except Exception:  # noqa: BLE001 - a broken cache is only a missed shortcut
        cached = {}
    root = model_dir.parent
    for rf in fetch:
        src = cached.get(rf.path)
        if src is None and rf.sha256 and rf.size >= REUSE_MIN_BYTES:
            try:
                src = dedup.find_verified_blob(root, rf.sha256, rf.size)
            except Exception:  # noqa: BLE001
                src = None
        if src is None:
            continue
        try:
            done[rf.path] = dedup.link_or_copy(src, targets[rf.path])
        except OSError:
            continue
    return done


def _partial_bytes(job: _FileJob) -> int:
    try:
        state = json.loads(job.map_path.read_text())
        if state.get("size") == job.rf.size and state.get("chunk_size") == job.chunk_size:
            return sum(job.chunk_len(int(i)) for i in state.get("done", []) if 0 <= int(i) < job.nchunks)
    except (OSError, ValueError, TypeError):
        pass
    return 0


def _cleanup_partial(model_dir: Path) -> None:
    partial = model_dir / paths.META_DIR / PARTIAL_DIR
    if not partial.is_dir():
        return
    for dirpath, _dirs, files in os.walk(partial, topdown=False):
        for name in files:
            if name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _offline_result(ref: names.ModelRef, model_dir: Path, old: manifests.Manifest | None,
                    want_revision: str | None) -> PullResult:
    hint = "run without --offline / HF_HUB_OFFLINE to download it"
    if old is None:
        raise RemoteError("offline and the model is not in the models root", ref.repo_id, hint)
    if want_revision and want_revision not in (old.revision, old.commit):
        raise RemoteError("offline and the model holds another revision",
                          f"{ref.repo_id}@{want_revision} (have {old.revision})", hint)
    for f in old.files:
        path = names.safe_repo_path(model_dir, f.path)
        try:
            size = path.stat().st_size
        except OSError:
            raise RemoteError("offline and the model is incomplete", f"{ref.repo_id}: {f.path} missing",
                              hint) from None
        if size != f.size:
            raise RemoteError("offline and the model is incomplete",
                              f"{ref.repo_id}: {f.path} has {size} bytes, expected {f.size}", hint)
    return PullResult(name=ref.repo_id, path=str(model_dir), revision=old.commit or "", files=len(old.files),
                      bytes_downloaded=0, bytes_total=old.total_bytes, verified=True,
                      kept_files=len(old.files), quant=old.quant)
