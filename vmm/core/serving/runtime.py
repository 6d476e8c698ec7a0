"""What is being served: runtime records, liveness, ps, stop and logs.

A record is written for every vLLM server vmm starts (``vmm serve``, attached or
``--detach``) under ``<state>/run/<dir>-<port>.json`` (state = ``$VMM_STATE_DIR`` or
``<root>/.vmm``). A server started outside vmm has no record and is never guessed at.
Records carry the pid *and* the process start time read from ``/proc``: a pid reused by an
unrelated process after a crash is recognised as dead, and its record is cleaned up.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmm.core import units
from vmm.core import fsutil, jsonfile
from vmm.core.errors import NotFoundError, UsageError
from vmm.core.serving.metrics import scrape
from vmm.core.store import paths


@dataclass
class RuntimeRecord:
    id: str                    # "<dir>-<port>"
    model: str                 # Hub id or directory name
    model_dir: str
    pid: int
    pid_start: str | None      # /proc/<pid>/stat start time (clock ticks since boot)
    host: str                  # the address vLLM listens on
    port: int
    started_at: float
    command: list[str]
    log_path: str | None = None
    detached: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    gpu_ids: list[int] | None = None    # the GPUs vmm chose (CUDA_VISIBLE_DEVICES), None on CPU
    gpu_bytes: int | None = None        # planned per GPU: vLLM's budget (utilization x total)

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"




def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot); None where /proc is absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw.rsplit(")", 1)[-1].split()
    return rest[19] if len(rest) > 19 else None


def session_of(pid: int) -> int | None:
    """Field 6 of /proc/<pid>/stat (session id): vLLM's workers share vmm's child's session."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return int(rest[3])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":          # a zombie has exited; only its parent's wait() is missing
            return False
    except (OSError, IndexError):
        pass
    if start is not None:
        now = process_start_time(pid)
        if now is not None and now != start:
            return False          # the pid was reused by another process
    return True


def record_for(model: str, model_dir: Path, pid: int, host: str, port: int, command: list[str],
               log_path: Path | None = None, detached: bool = False, gpu_ids: list[int] | None = None,
               gpu_bytes: int | None = None) -> RuntimeRecord:
    return RuntimeRecord(
        id=f"{model_dir.name}-{port}", model=model, model_dir=str(model_dir), pid=pid,
        pid_start=process_start_time(pid), host=host, port=port, started_at=time.time(),
        command=list(command), log_path=str(log_path) if log_path else None, detached=detached,
        gpu_ids=list(gpu_ids) if gpu_ids is not None else None, gpu_bytes=gpu_bytes,
    )


def register(root: Path, record: RuntimeRecord) -> Path:
    path = paths.run_dir(root) / f"{record.id}.json"
    fsutil.atomic_write_json(path, asdict(record))
    return path


def unregister(root: Path, record_id: str) -> None:
    try:
        (paths.run_dir(root) / f"{record_id}.json").unlink()
    except FileNotFoundError:
        pass


def list_records(root: Path) -> list[RuntimeRecord]:
    records = []
    directory = paths.run_dir(root)
    try:
        found = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in found:
        try:
            doc = jsonfile.loads(path.read_bytes())
            records.append(RuntimeRecord(**{k: v for k, v in doc.items()
                                            if k in RuntimeRecord.__dataclass_fields__}))
        except (OSError, ValueError, TypeError):
            # A torn or foreign file: not ours to interpret; leave it for the operator.
            continue
    return records


def live_records(root: Path) -> list[RuntimeRecord]:
    """Records of this host's servers whose process is still alive (GPUs and ports they hold)."""
    return [r for r in list_records(root)
            if r.hostname == socket.gethostname() and pid_alive(r.pid, r.pid_start)]


@dataclass
class ServerStatus:
    id: str
    model: str
    pid: int
    host: str
    port: int
    url: str
    alive: bool
    started_at: float
    uptime_s: float | None
    detached: bool
    log_path: str | None
    command: list[str]
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    metrics_error: str | None = None
    gpu_ids: list[int] | None = None
    gpu_bytes: int | None = None
    layout: dict | None = None          # tensor_parallel_size, data_parallel_size, expert_parallel


def layout_of(command: list[str]) -> dict:
    """The parallel layout a ``vllm serve`` argv asks for (vLLM's defaults where it says nothing):
    a data-parallel server holds tensor_parallel_size x data_parallel_size GPUs, each with the
    same budget, which is how placement counts its GPUs (the record's gpu_ids and gpu_bytes)."""
    def value(flag: str, default: int) -> int:
        for i, word in enumerate(command):
            if word == flag and i + 1 < len(command) and command[i + 1].isdigit():
                return int(command[i + 1])
            if word.startswith(flag + "=") and word.split("=", 1)[1].isdigit():
                return int(word.split("=", 1)[1])
        return default
    return {"tensor_parallel_size": value("--tensor-parallel-size", 1),
            "data_parallel_size": value("--data-parallel-size", 1),
            "expert_parallel": "--enable-expert-parallel" in command}


def _status(record: RuntimeRecord, interval_s: float) -> ServerStatus:
    alive = pid_alive(record.pid, record.pid_start)
    status = ServerStatus(
        id=record.id, model=record.model, pid=record.pid, host=record.host, port=record.port,
        url=record.url, alive=alive, started_at=record.started_at,
        uptime_s=units.age_s(record.started_at) if alive else None,
        detached=record.detached, log_path=record.log_path, command=record.command,
        gpu_ids=record.gpu_ids, gpu_bytes=record.gpu_bytes, layout=layout_of(record.command or []),
    )
    if not alive:
        return status
    try:
        first = scrape(record.url)
        t0 = time.monotonic()
        second = first
        if interval_s > 0:
            time.sleep(interval_s)
            second = scrape(record.url)
        elapsed = max(time.monotonic() - t0, 1e-9)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        status.metrics_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        return status
    status.running = second["running"]
    status.waiting = second["waiting"]
    status.kv_cache_usage = second["kv_cache_usage"]
    status.prompt_tokens_total = second["prompt_tokens_total"]
    status.generation_tokens_total = second["generation_tokens_total"]
    if interval_s > 0:
        for key in ("prompt_tokens", "generation_tokens"):
            a, b = first[f"{key}_total"], second[f"{key}_total"]
            if a is not None and b is not None:
                setattr(status, f"{key}_per_s", max(0.0, b - a) / elapsed)
    return status


def ps(root: Path, interval_s: float = 1.0, clean: bool = True) -> list[ServerStatus]:
    """Every server vmm started on this host; dead ones are reported once and cleaned up.

    Token rates are measured over ``interval_s`` (two scrapes of /metrics, all servers in
    parallel), so the figure is "now", not an average since start.
    """
    records = [r for r in list_records(root) if r.hostname == socket.gethostname()]
    if not records:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
        statuses = list(pool.map(lambda r: _status(r, interval_s), records))
    if clean:
        for status in statuses:
            if not status.alive:
                unregister(root, status.id)
    return statuses


# ------------------------------------------------------------------ stop

@dataclass
class StopResult:
    id: str
    model: str
    pid: int
    port: int
    stopped: bool
    signal: str              # "SIGTERM" when it went gracefully, "SIGKILL" after the timeout
    waited_s: float


def select_records(root: Path, target: str | None, all_: bool) -> list[RuntimeRecord]:
    records = [r for r in list_records(root) if r.hostname == socket.gethostname()]
    if all_:
        return records
    if not target:
        raise UsageError("nothing to stop", "give a model name or port, or --all",
                         "see `vmm ps` for what is running")
    if target.isdigit():
        chosen = [r for r in records if r.port == int(target)]
    else:
        from vmm.core import names

        ref = names.parse_model_name(target)
        chosen = [r for r in records if Path(r.model_dir).name == ref.dir_name]
    if not chosen:
        raise NotFoundError("no server started by vmm matches", target, "see `vmm ps`")
    return chosen


def _signal_group(record: RuntimeRecord, sig: int) -> None:
    # vmm starts vLLM in its own session (pgid == pid): signal the whole group so the
    # engine-core and worker children go too.
    try:
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, sig)
            return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        pass


def stop(root: Path, target: str | None = None, all_: bool = False,
         timeout_s: float = 30.0) -> list[StopResult]:
    """Graceful SIGTERM, wait up to ``timeout_s``, then SIGKILL; records are removed."""
    results = []
    for record in select_records(root, target, all_):
        t0 = time.monotonic()
        used = "SIGTERM"
        if pid_alive(record.pid, record.pid_start):
            _signal_group(record, signal.SIGTERM)
            while pid_alive(record.pid, record.pid_start) and time.monotonic() - t0 < timeout_s:
                _reap(record.pid)
                time.sleep(0.1)
            if pid_alive(record.pid, record.pid_start):
                used = "SIGKILL"
                _signal_group(record, signal.SIGKILL)
                while pid_alive(record.pid, record.pid_start) and time.monotonic() - t0 < timeout_s + 10:
                    _reap(record.pid)
                    time.sleep(0.05)
        stopped = not pid_alive(record.pid, record.pid_start)
        if stopped:
            unregister(root, record.id)
        results.append(StopResult(record.id, record.model, record.pid, record.port, stopped,
                                  used, round(time.monotonic() - t0, 3)))
    return results


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (tests, attached serve)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ------------------------------------------------------------------ logs

def log_path_for(root: Path, target: str) -> Path:
    """The log file of a detached server (by model name or port); records first, then files."""
    records = [r for r in list_records(root) if r.log_path]
    chosen = None
    if target.isdigit():
        chosen = next((r for r in records if r.port == int(target)), None)
    else:
        from vmm.core import names

        dir_name = names.parse_model_name(target).dir_name
        matches = [r for r in records if Path(r.model_dir).name == dir_name]
        chosen = matches[-1] if matches else None
        if chosen is None:
            # The server is gone but its log stays: take the newest log of that model.
            logs = sorted(paths.logs_dir(root).glob(f"{dir_name}-*.log"), key=lambda p: p.stat().st_mtime)
            if logs:
                return logs[-1]
    if chosen is None:
        raise NotFoundError("no log for", target,
                            "logs exist for servers started with `vmm serve --detach`; see `vmm ps`")
    return Path(chosen.log_path)


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a file without reading all of a large log."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block, data = 65536, b""
        while size > 0 and data.count(b"\n") <= lines:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    text = data.decode("utf-8", "replace").splitlines()
    return text[-lines:] if lines > 0 else []


def follow(path: Path, lines: int = 100, stop=None, poll_s: float = 0.2):
    """The last ``lines`` lines of a log, then every line appended to it, as they come
    (``vmm logs --follow``). Ends when ``stop()`` returns true (checked while idle), else
    runs until the caller stops iterating; a line still being written is held back until its
    newline arrives. :class:`NotFoundError` when the file is gone."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)     # before the tail: nothing appended meanwhile is lost
            yield from tail_lines(path, lines)
            pending = b""
            while stop is None or not stop():
                chunk = handle.readline()
                if not chunk:
                    time.sleep(poll_s)
                    continue
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending[:-1].decode("utf-8", "replace")
                    pending = b""
    except FileNotFoundError:
        raise NotFoundError("log file is gone", str(path), "the server's state dir was cleaned") from None
