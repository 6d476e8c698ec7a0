"""One file being fetched: its preallocated partial file, its chunk map and its hash.

``<model>/.vmm/partial/<path>.part`` holds the data at its final offsets;
``<path>.part.json`` (the chunk map, like aria2's control file) says which chunks are
complete (``done``) and how many bytes of each chunk in flight are on disk from its start
(``written``). The map is rewritten (temporary name + rename) whenever a chunk completes and
after every ``MAP_FLUSH_BYTES`` of data written to the file, always after the data it
describes was written: a SIGKILL loses at most that much per file plus one read block per
connection. The data is not fsynced (see docs/pull.md: after a power cut the map may claim
bytes that never reached the disk; the hash check at the end of the file catches that).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

from vmm.core import hashing
from vmm.core.errors import DiskSpaceError, UsageError, VmmError
from vmm.core.hub.client import RemoteFile

MAP_FLUSH_BYTES = 2 * 1024 * 1024
HASH_BLOCK = 8 * 1024 * 1024


def disk_error(exc: OSError, path: Path) -> VmmError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError("no space left on device while downloading", str(path),
                              "free space and run the same command again; finished chunks are kept")
    return UsageError("cannot write the download", str(path), exc.strerror or str(exc))


class FileJob:
    """A file being fetched. ``lock`` (a Condition, created with the job) guards ``done``,
    ``written``, ``hashed_upto`` and the hasher; ``map_lock`` serialises map writes."""

    def __init__(self, rf: RemoteFile, final: Path, partial_dir: Path, chunk_size: int) -> None:
        self.rf = rf
        self.final = final
        self.part = partial_dir / (rf.path + ".part")
        self.map_path = partial_dir / (rf.path + ".part.json")
        self.chunk_size = chunk_size
        self.nchunks = -(-rf.size // chunk_size)   # 0 for an empty file
        self.algorithm, self.expected = hashing.expected_digest(rf)
        self.lock = threading.Condition()
        self.map_lock = threading.Lock()
        self.done: set[int] = set()
        self.written: dict[int, int] = {}    # chunk in flight -> bytes on disk from its start
        self.unsaved = 0                      # bytes written since the map was last saved
        self.hashed_upto = 0                  # chunks hashed so far (a contiguous prefix)
        self.hasher = hashing.new_hasher(self.algorithm, rf.size)
        self.fd = -1
        self.attempts = 0                     # downloads of the whole file that failed the hash
        self.redirect: str | None = None      # the CDN URL the endpoint sent us to
        self.redirect_expires: float | None = None   # when its signature expires (monotonic)
        self.streamer: int | None = None      # the worker streaming the whole file (server ignores Range)
        self.placed = False                   # moved into place: no map any more

    # ---- the chunk map
    def load(self) -> int:
        """Read an earlier run's chunk map; return the bytes it says are on disk."""
        try:
            state = json.loads(self.map_path.read_text())
            if not (isinstance(state, dict) and state.get("size") == self.rf.size
                    and state.get("expected") == self.expected and state.get("chunk_size") == self.chunk_size):
                raise ValueError("another file")
            done = {int(i) for i in state.get("done", []) if 0 <= int(i) < self.nchunks}
            written = {int(i): int(n) for i, n in (state.get("written") or {}).items()
                       if 0 <= int(i) < self.nchunks and int(i) not in done
                       and 0 < int(n) < self.chunk_len(int(i))}
        except (OSError, ValueError, TypeError, AttributeError):
            done, written = set(), {}
        with self.lock:
            self.done, self.written = done, written
        return self.present()

    def present(self) -> int:
        with self.lock:
            return sum(self.chunk_len(i) for i in self.done) + sum(self.written.values())

    def save_map(self) -> None:
        with self.map_lock:
            if self.placed:
                return
            with self.lock:
                doc = {"path": self.rf.path, "size": self.rf.size, "chunk_size": self.chunk_size,
                       "expected": self.expected, "algorithm": self.algorithm,
                       "done": sorted(self.done), "written": {str(i): n for i, n in self.written.items()}}
                self.unsaved = 0
            tmp = self.map_path.with_name(self.map_path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.map_path)
            except OSError as exc:
                raise disk_error(exc, self.map_path) from exc

    # ---- the partial file
    def open(self) -> None:
        """Open (or create) the partial file at full size; forget the map if the file is gone."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        try:
            fits = self.part.stat().st_size == self.rf.size
        except OSError:
            fits = False
        if not fits:
            with self.lock:
                self.done, self.written = set(), {}
        try:
            self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o666)   # the umask applies
            if os.fstat(self.fd).st_size != self.rf.size:
                os.ftruncate(self.fd, self.rf.size)
        except OSError as exc:
            self.close()
            raise disk_error(exc, self.part) from exc
        self.save_map()

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.rf.size - index * self.chunk_size)

    def missing_chunks(self) -> list[int]:
        with self.lock:
            return [i for i in range(self.nchunks) if i not in self.done]

    def remaining(self, index: int) -> tuple[int, int]:
        """The byte range [start, end) of chunk ``index`` not yet on disk."""
        start = index * self.chunk_size
        with self.lock:
            have = self.written.get(index, 0)
        return start + have, start + self.chunk_len(index)

    def on_disk_upto(self, index: int) -> int:
        """The file offset up to which chunk ``index`` is on disk (its end when done)."""
        start = index * self.chunk_size
        with self.lock:
            if index in self.done:
                return start + self.chunk_len(index)
            return start + self.written.get(index, 0)

    def first_missing(self) -> int | None:
        """The first file offset not on disk (None when every chunk is done)."""
        with self.lock:
            for index in range(self.nchunks):
                if index not in self.done:
                    return index * self.chunk_size + self.written.get(index, 0)
        return None

    def append(self, index: int, data: memoryview) -> None:
        """Write the next bytes of chunk ``index`` (one worker owns a chunk at a time)."""
        offset = index * self.chunk_size + self.written.get(index, 0)
        pos = 0
        try:
            while pos < len(data):
                pos += os.pwrite(self.fd, data[pos:], offset + pos)
        except OSError as exc:
            raise disk_error(exc, self.part) from exc
        with self.lock:
            self.written[index] = self.written.get(index, 0) + pos
            self.unsaved += pos
            flush = self.unsaved >= MAP_FLUSH_BYTES
        if flush:
            self.save_map()

    def chunk_done(self, index: int) -> None:
        with self.lock:
            self.done.add(index)
            self.written.pop(index, None)
            self.lock.notify_all()
        self.save_map()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def restart(self) -> None:
        """After a hash mismatch: drop the data and start the file again."""
        self.close()
        for path in (self.part, self.map_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        with self.lock:
            self.done, self.written = set(), {}
            self.hashed_upto = 0
            self.hasher = hashing.new_hasher(self.algorithm, self.rf.size)
        self.open()

    def place(self) -> None:
        """Move the verified file to its final path (atomic rename) and forget the map.

        No fsync per file: it stalls every concurrent writer behind a full writeback of the
        file (measured: ~160 ms per 512 MiB shard, and slower pulls overall). The durable
        record is the manifest (fsynced, written last)."""
        self.close()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        with self.map_lock:
            os.replace(self.part, self.final)
            self.placed = True
            try:
                self.map_path.unlink()
            except FileNotFoundError:
                pass

    # ---- hashing, overlapped with the transfer
    def hash_all(self, stop: threading.Event) -> bool:
        """Hash chunks as they complete, in order; True once the whole file is hashed,
        False when ``stop`` was set first. Only the job's hasher thread calls this."""
        while True:
            with self.lock:
                while self.hashed_upto not in self.done and self.hashed_upto < self.nchunks:
                    if stop.is_set():
                        return False
                    self.lock.wait(0.2)
                if self.hashed_upto >= self.nchunks:
                    return True
                index, hasher = self.hashed_upto, self.hasher
            if hasher is not None:
                start, end = index * self.chunk_size, index * self.chunk_size + self.chunk_len(index)
                while start < end:
                    block = os.pread(self.fd, min(HASH_BLOCK, end - start), start)
                    if not block:
                        raise OSError(f"{self.part} is shorter than expected")
                    hasher.update(block)
                    start += len(block)
            with self.lock:
                self.hashed_upto = index + 1

    def digest(self) -> str:
        return self.hasher.hexdigest() if self.hasher is not None else ""
