"""Files written so that a crash never leaves a half file under a final name.

Every file vmm writes into the models root or its state goes through here: a temporary
name in the same directory, flushed and fsynced, then renamed over the final name.

Files get the mode the umask gives (0644 under umask 022, 0664 under 002), like any file a
program creates with ``open``; ``mkstemp`` alone would make them 0600, unreadable by the
other users of a shared models root. Files vmm creates with ``os.open`` (locks, partial
downloads) pass :data:`FILE_MODE` and let the kernel apply the umask.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from vmm.core.errors import DiskSpaceError

FILE_MODE = 0o666           # what os.open/open create with, before the umask

_umask_lock = threading.Lock()
_umask_cached: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it.

    Linux (4.7+) reports it in ``/proc/self/status`` ("Umask:"). Elsewhere the only way is
    to set it and set it back, which another thread creating a file at that instant would
    see; that is done once, under a lock, and cached.
    """
    global _umask_cached
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if _umask_cached is None:
            _umask_cached = os.umask(0o077)
            os.umask(_umask_cached)
        return _umask_cached


def file_mode() -> int:
    """The mode a new file gets under the current umask (0644 under 022, 0664 under 002)."""
    return FILE_MODE & ~current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())      # mkstemp's 0600 -> what the umask gives
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskSpaceError("no space left on device", str(path), "free space and retry") from exc
        raise


def atomic_write_json(path: Path, document: Any) -> None:
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
