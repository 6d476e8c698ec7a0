"""Per-model locks: exclusive for pull and rm, shared for serve (flock, freed by the kernel)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmm.core import fsutil
from vmm.core.errors import BusyError, UsageError
from vmm.core.store.local import ensure_root
from vmm.core.store.paths import lock_path


def read_lock_info(root: Path, dir_name: str) -> dict[str, Any] | None:
    try:
        return json.loads(lock_path(root, dir_name).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def model_lock(root: Path, dir_name: str, purpose: str, shared: bool = False,
               wait: bool = False, on_wait: Any = None) -> Iterator[None]:
    """Hold a model's lock: exclusive for pull/rm, shared for serve.

    An ``flock`` on ``<root>/.vmm/locks/<dir>.lock``: the kernel drops it when the holding
    process dies (SIGKILL included), so a dead holder never blocks anyone and there is
    nothing stale to take over. The file also records pid, host and start time of the
    exclusive holder for the messages. On NFS, Linux maps flock to POSIX byte-range locks
    served by the NFS lock manager (v4 built in, v3 through lockd), so it holds across
    hosts there as well; on filesystems without lock support the call fails and vmm says so.
    """
    import fcntl

    path = lock_path(root, dir_name)
    ensure_root(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, fsutil.FILE_MODE)
        writable = True
    except PermissionError:
        # A lock file another user made without group write (an older vmm, umask 022):
        # flock works on a read-only descriptor; only the holder note cannot be written.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        writable = False
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_info(root, dir_name) or {}
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('purpose', '?')})"
            if not wait:
                raise BusyError(
                    "model is locked by another vmm process", f"{dir_name}: {who}",
                    "wait for it to finish, or stop it",
                ) from None
            if on_wait:
                on_wait(who)
            fcntl.flock(fd, mode)
        except OSError as exc:
            raise UsageError("cannot lock the model (filesystem without lock support?)",
                             str(path), exc.strerror or str(exc)) from exc
        if not shared and writable:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.time(), "purpose": purpose}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)


def is_locked(root: Path, dir_name: str) -> bool:
    """True while any process holds the model's lock (shared or exclusive)."""
    import fcntl

    path = lock_path(root, dir_name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
