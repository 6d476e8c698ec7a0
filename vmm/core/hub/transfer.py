"""The transfer engine: fetch the missing chunks of several files in parallel, hash each
file while it arrives, verify it and move it into place.

A small state machine. Every file is a :class:`FileJob` (partial.py). A work queue holds
(job, chunk) items in file order. Worker threads (one keep-alive connection per host each)
take an item, fetch what of the chunk is not on disk yet (retrying with backoff) and mark it
done. Each file has one hasher thread, started with its first chunk, that hashes the chunks
in order as they complete, then verifies the digest: a match moves the file into place and
counts it finished; a mismatch restarts the file and queues its chunks again (bounded by
``FILE_ATTEMPTS``). The run ends when every file is finished, or at the first error or
interrupt; every thread is joined before ``run`` returns or raises.

Real links (docs/pull.md, "When the link misbehaves"):

- a CDN URL is signed for a limited time: when its signature has expired, or the CDN
  refuses it (401/403), the chunk asks the endpoint's ``/resolve/`` again for a fresh one
  and goes on from the last byte written (only a refusal from the endpoint itself means
  "log in");
- a connection that sends nothing for the stall deadline (``VMM_STALL_TIMEOUT``) is dropped
  and its range resumed on a new connection;
- a server that ignores Range (200 with the whole file) gets one whole-file stream per
  file: the first worker to see it streams the file, writing the chunks not on disk yet and
  reading past the rest; a cut stream starts again from byte 0 and reads past what is on
  disk (such a server cannot start anywhere else);
- a redirect to a non-HTTP URL, a malformed redirect, 404/410 and other 4xx fail at once.
A retry that moved the chunk forward does not count against ``CHUNK_ATTEMPTS``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from vmm.core import settings
from vmm.core.errors import IntegrityError, Interrupted, RemoteError
from vmm.core.hub.client import RemoteFile, RepoSnapshot
from vmm.core.hub.connection import Connections, RangeRequest, Retry, fetch_range, host_key
from vmm.core.hub.partial import FileJob

# Defaults measured with bench/pull.py (docs/benchmarks.md, "## pull").
DEFAULT_WORKERS = 8
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
CHUNK_ATTEMPTS = 8              # per chunk, for retryable failures
FILE_ATTEMPTS = 3               # whole-file refetches after a hash mismatch
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0
SOCKET_TIMEOUT_S = 30.0         # joining threads at the end of a run
WRITE_BLOCK = 2 * 1024 * 1024   # bytes received before they are written (per worker buffer)
REPORT_INTERVAL_S = 0.1


@dataclass
class ProgressUpdate:
    bytes_done: int               # bytes of the selected files present and fetched so far
    bytes_total: int
    bytes_downloaded: int         # bytes transferred by this run
    files_done: int
    files_total: int
    current: str | None = None
    message: str | None = None    # a one-off note (waiting for a lock, retrying, repairing)
    finished: bool = False


ProgressCallback = Callable[[ProgressUpdate], None]


class Counters:
    """What the progress display shows; updated from every thread under one lock."""

    def __init__(self, progress: ProgressCallback | None, bytes_total: int, bytes_done: int,
                 files_total: int, files_done: int) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.bytes_total, self.bytes_done, self.bytes_downloaded = bytes_total, bytes_done, 0
        self.files_total, self.files_done = files_total, files_done
        self.current: str | None = None
        self.last_report = 0.0

    def add(self, done: int = 0, downloaded: int = 0, files: int = 0, current: str | None = None) -> None:
        with self.lock:
            self.bytes_done += done
            self.bytes_downloaded += downloaded
            self.files_done += files
            if current is not None:
                self.current = current

    def report(self, force: bool = False, message: str | None = None) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        with self.lock:
            if not force and message is None and now - self.last_report < REPORT_INTERVAL_S:
                return
            self.last_report = now
            update = ProgressUpdate(self.bytes_done, self.bytes_total, self.bytes_downloaded,
                                    self.files_done, self.files_total, self.current, message)
        self.progress(update)


class Engine:
    def __init__(self, snapshot: RepoSnapshot, endpoint: str, token: str | None, workers: int,
                 chunk_size: int, counters: Counters, stall_timeout_s: float | None = None,
                 url_for: Callable[[RemoteFile], str] | None = None) -> None:
        """``url_for``: the URL of a file (default the Hub's ``/resolve/{commit}/{path}``);
        another source (an OCI registry's blob URL) passes its own. The token goes to the
        host of ``endpoint`` only; a redirect elsewhere is a CDN (signed URLs renewed by
        asking ``url_for`` again)."""
        self.snapshot = snapshot
        self._url_for = url_for
        self.stall_timeout_s = stall_timeout_s if stall_timeout_s is not None else settings.stall_timeout_s()
        self.endpoint = endpoint.rstrip("/")
        self.auth = (host_key(self.endpoint), token)
        self.workers = max(1, workers)
        self.chunk_size = chunk_size
        self.counters = counters
        self.stop = threading.Event()
        self.cond = threading.Condition()     # guards queue, unfinished, error, threads, conns
        self.queue: deque[tuple[FileJob, int]] = deque()
        self.unfinished = 0
        self.error: BaseException | None = None
        self.hashers: dict[str, threading.Thread] = {}
        self.conns: list[Connections] = []

    # ---- the run
    def run(self, jobs: list[FileJob]) -> None:
        """Fetch, verify and place every job; raise the first error (or Interrupted)."""
        with self.cond:
            self.unfinished = len(jobs)
            for job in jobs:
                self.queue.extend((job, i) for i in job.missing_chunks())
                if not job.missing_chunks():        # all on disk already (resume): verify it
                    self._start_hasher(job)
        workers = [threading.Thread(target=self._worker, daemon=True, name=f"vmm-fetch-{n}")
                   for n in range(self.workers)]
        try:
            for thread in workers:
                thread.start()
            self._wait()
        except KeyboardInterrupt:
            raise Interrupted("interrupted", self.snapshot.repo_id,
                              "run the same command again to resume; data on disk is kept") from None
        finally:
            self._shutdown(workers)
        if self.error is not None:
            raise self.error
        self.counters.report(force=True)

    def _wait(self) -> None:
        while True:
            with self.cond:
                if self.unfinished == 0 or self.error is not None:
                    return
                self.cond.wait(0.2)
            self.counters.report()

    def _shutdown(self, workers: list[threading.Thread]) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
            conns = list(self.conns)
        for c in conns:
            c.abort()                       # a worker blocked in recv returns now
        for thread in workers:
            thread.join(SOCKET_TIMEOUT_S)
        with self.cond:
            hashers = list(self.hashers.values())
        for thread in hashers:
            thread.join(SOCKET_TIMEOUT_S)

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.stop.set()
            self.cond.notify_all()

    # ---- workers
    def _next(self) -> tuple[FileJob, int] | None:
        """The next chunk to fetch; None once every file is finished or the run stops."""
        with self.cond:
            while not self.queue and self.unfinished > 0 and not self.stop.is_set():
                self.cond.wait()
            if self.stop.is_set() or not self.queue:
                return None
            job, index = self.queue.popleft()
            self._start_hasher(job)
            return job, index

    def _worker(self) -> None:
        conns = Connections(self.stall_timeout_s)
        with self.cond:
            self.conns.append(conns)
        buf = bytearray(min(self.chunk_size, WRITE_BLOCK))
        try:
            while (item := self._next()) is not None:
                job, index = item
                self.counters.add(current=job.rf.path)
                if self._fetch_chunk(conns, job, index, buf):
                    job.chunk_done(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)
        finally:
            conns.close()

    def url_for(self, job: FileJob) -> str:
        if self._url_for is not None:
            return self._url_for(job.rf)
        return (f"{self.endpoint}/{quote(self.snapshot.repo_id, safe='/')}/resolve/"
                f"{quote(self.snapshot.commit, safe='')}/{quote(job.rf.path, safe='/')}")

    def _label(self, job: FileJob) -> str:
        return f"{self.snapshot.repo_id}/{job.rf.path}"

    def _fetch_chunk(self, conns: Connections, job: FileJob, index: int, buf: bytearray) -> bool:
        """Fetch what of chunk ``index`` is not on disk, retrying with backoff. True when the
        chunk is complete; False when a whole-file stream took the file over (it marks the
        chunks it writes)."""

        def sink(view: memoryview) -> None:
            self.counters.add(downloaded=len(view))
            job.append(index, view)
            self.counters.add(done=len(view))

        attempts = _Attempts(self, job)
        me = threading.get_ident()
        while True:
            if job.streamer == me:           # a stream this worker began was cut: go on with it
                self._stream_file(conns, job, buf, attempts)
                return False
            if job.streamer is not None:
                return False                 # another worker streams the whole file
            start, end = job.remaining(index)
            if start >= end:
                return True
            req = self._request(job, start, end)
            try:
                how = fetch_range(conns, req, self.auth, buf, sink, self.stop,
                                  whole=lambda: self._claim_stream(job))
            except Retry as retry:
                self._keep_redirect(job, req)
                attempts.failed(retry, moved=job.remaining(index)[0] > start)
                continue
            self._keep_redirect(job, req)
            if how == "range":
                return True
            if how == "whole":               # this worker streamed the file from byte 0
                self._stream_file(conns, job, buf, attempts)
            return False

    def _request(self, job: FileJob, start: int, end: int) -> RangeRequest:
        req = RangeRequest(self.url_for(job), start, end, self._label(job),
                           whole_file=start == 0 and end == job.rf.size, size=job.rf.size)
        req.redirect, req.redirect_expires = job.redirect, job.redirect_expires
        return req

    @staticmethod
    def _keep_redirect(job: FileJob, req: RangeRequest) -> None:
        job.redirect, job.redirect_expires = req.redirect, req.redirect_expires

    # ---- servers that ignore Range
    def _claim_stream(self, job: FileJob):
        """Called by fetch_range when the server ignored Range for ``job``: the first worker
        becomes the file's streamer (its queued chunks leave the queue); a sink for the body
        from byte 0, or None when another worker streams it already."""
        me = threading.get_ident()
        with self.cond:
            if job.streamer not in (None, me):
                return None
            first = job.streamer is None
            job.streamer = me
            if first:
                kept = [item for item in self.queue if item[0] is not job]
                self.queue.clear()
                self.queue.extend(kept)
        if first:
            self.counters.report(message=f"{job.rf.path}: the server ignores Range; "
                                         "one whole-file stream for it")
        return _StreamSink(self, job, 0)

    def _stream_file(self, conns: Connections, job: FileJob, buf: bytearray, attempts: _Attempts) -> None:
        """As the file's streamer: stream until every chunk is on disk, then let go. Each
        try asks for the bytes from the first one missing; a server that ignores Range
        answers from byte 0 and the sink reads past what is on disk."""
        try:
            while (start := job.first_missing()) is not None:
                req = self._request(job, start, job.rf.size)
                try:
                    fetch_range(conns, req, self.auth, buf, _StreamSink(self, job, start), self.stop,
                                whole=lambda: _StreamSink(self, job, 0))
                except Retry as retry:
                    self._keep_redirect(job, req)
                    now = job.first_missing()
                    attempts.failed(retry, moved=now is None or now > start)
                    continue
                self._keep_redirect(job, req)
        finally:
            with self.cond:
                job.streamer = None

    # ---- hashers
    def _start_hasher(self, job: FileJob) -> None:
        """Called under ``cond``: one hasher thread per file, started once."""
        if job.rf.path not in self.hashers and not self.stop.is_set():
            thread = threading.Thread(target=self._hash_and_place, args=(job,), daemon=True,
                                      name=f"vmm-hash-{len(self.hashers)}")
            self.hashers[job.rf.path] = thread
            thread.start()

    def _hash_and_place(self, job: FileJob) -> None:
        try:
            while job.hash_all(self.stop):
                if self._verify(job):
                    job.place()
                    self.counters.add(files=1)
                    self.counters.report(force=True)
                    with self.cond:
                        self.unfinished -= 1
                        self.cond.notify_all()
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)

    def _verify(self, job: FileJob) -> bool:
        """True when the digest matches; else restart the file and queue it again."""
        digest = job.digest()
        if job.algorithm == "size" or digest == job.expected:
            return True
        job.attempts += 1
        if job.attempts >= FILE_ATTEMPTS:
            raise IntegrityError(
                f"hash mismatch after {FILE_ATTEMPTS} downloads ({job.algorithm} {digest[:12]}, "
                f"expected {job.expected[:12]})", job.rf.path,
                "the server keeps sending different bytes; try later or another HF_ENDPOINT")
        self.counters.report(message=f"hash mismatch in {job.rf.path}: fetching it again")
        self.counters.add(done=-job.rf.size)
        job.restart()
        with self.cond:
            self.queue.extend((job, i) for i in range(job.nchunks))
            self.cond.notify_all()
        return False


class _Attempts:
    """Retries of one chunk (or stream): backoff, and the error once they run out. A retry
    after progress, or a free one (an expired signed URL), does not count."""

    def __init__(self, engine: Engine, job: FileJob) -> None:
        self.engine, self.job, self.count = engine, job, 0

    def failed(self, retry: Retry, moved: bool) -> None:
        engine, job = self.engine, self.job
        if engine.stop.is_set():
            raise Interrupted("stopped", job.rf.path, "run the same command again") from None
        if moved:
            self.count = 0
        if retry.free:
            return
        self.count += 1
        if self.count >= CHUNK_ATTEMPTS:
            raise RemoteError(f"download failed after {CHUNK_ATTEMPTS} attempts ({retry.why})",
                              engine._label(job), "check the network and run the same command again to resume"
                              ) from None
        delay = retry.delay
        if delay is None:
            delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self.count - 1)) * (0.5 + random.random())
        engine.counters.report(message=f"retrying {job.rf.path} in {delay:.1f}s ({retry.why})")
        engine.stop.wait(delay)


class _StreamSink:
    """The body of a whole-file answer, from file offset ``offset`` on: bytes of chunks not
    on disk yet are written (each completed chunk marked done, so the hasher follows the
    stream), the rest is read past."""

    def __init__(self, engine: Engine, job: FileJob, offset: int) -> None:
        self.engine, self.job, self.offset = engine, job, offset

    def __call__(self, view: memoryview) -> None:
        job, counters = self.job, self.engine.counters
        counters.add(downloaded=len(view))
        pos, i, n = self.offset, 0, len(view)
        while i < n:
            index = pos // job.chunk_size
            chunk_end = index * job.chunk_size + job.chunk_len(index)
            take = min(n - i, chunk_end - pos)
            have = job.on_disk_upto(index)           # file offset up to which chunk ``index`` is on disk
            if pos + take > have:
                skip = max(0, have - pos)
                job.append(index, view[i + skip:i + take])
                counters.add(done=take - skip)
                if pos + take == chunk_end:
                    job.chunk_done(index)
            pos += take
            i += take
        self.offset = pos


def make_jobs(files, targets: dict[str, Path], partial_dir: Path, chunk_size: int) -> list[FileJob]:
    return [FileJob(rf, targets[rf.path], partial_dir, chunk_size) for rf in files]
