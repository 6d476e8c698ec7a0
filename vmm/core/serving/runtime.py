"""What is being served: runtime records, live metrics, stopping, and deployment output.

A record is written for every vLLM server vmm starts (``vmm serve``, attached or
``--detach``) under ``<state>/run/<dir>-<port>.json`` (state = ``$VMM_STATE_DIR`` or
``<root>/.vmm``). A server started outside vmm has no record and is never guessed at.
Records carry the pid *and* the process start time read from ``/proc``: a pid reused by an
unrelated process after a crash is recognised as dead, and its record is cleaned up.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmm.core import settings
from vmm.core import fsutil
from vmm.core.errors import NotFoundError, UsageError


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

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def run_dir(root: Path) -> Path:
    return settings.state_dir(root) / "run"


def logs_dir(root: Path) -> Path:
    return settings.state_dir(root) / "logs"


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot); None where /proc is absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw.rsplit(")", 1)[-1].split()
    return rest[19] if len(rest) > 19 else None


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
               log_path: Path | None = None, detached: bool = False) -> RuntimeRecord:
    return RuntimeRecord(
        id=f"{model_dir.name}-{port}", model=model, model_dir=str(model_dir), pid=pid,
        pid_start=process_start_time(pid), host=host, port=port, started_at=time.time(),
        command=list(command), log_path=str(log_path) if log_path else None, detached=detached,
    )


def register(root: Path, record: RuntimeRecord) -> Path:
    path = run_dir(root) / f"{record.id}.json"
    fsutil.atomic_write_json(path, asdict(record))
    return path


def unregister(root: Path, record_id: str) -> None:
    try:
        (run_dir(root) / f"{record_id}.json").unlink()
    except FileNotFoundError:
        pass


def list_records(root: Path) -> list[RuntimeRecord]:
    records = []
    directory = run_dir(root)
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            records.append(RuntimeRecord(**{k: v for k, v in doc.items()
                                            if k in RuntimeRecord.__dataclass_fields__}))
        except (OSError, ValueError, TypeError):
            # A torn or foreign file: not ours to interpret; leave it for the operator.
            continue
    return records


# ------------------------------------------------------------------ metrics

# vLLM's Prometheus names (vllm/v1/metrics/loggers.py, 0.10-0.33). The KV-cache gauge was
# vllm:gpu_cache_usage_perc in the V0 engine and is vllm:kv_cache_usage_perc in V1.
METRIC_KEYS = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric name over its label sets (engines, models)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        totals[match.group(1)] = totals.get(match.group(1), 0.0) + value
    return totals


def pick_metrics(samples: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, names in METRIC_KEYS.items():
        out[key] = next((samples[n] for n in names if n in samples), None)
    return out


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float | None]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as response:
        text = response.read(8 << 20).decode("utf-8", "replace")
    return pick_metrics(parse_prometheus(text))


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


def _status(record: RuntimeRecord, interval_s: float) -> ServerStatus:
    alive = pid_alive(record.pid, record.pid_start)
    status = ServerStatus(
        id=record.id, model=record.model, pid=record.pid, host=record.host, port=record.port,
        url=record.url, alive=alive, started_at=record.started_at,
        uptime_s=time.time() - record.started_at if alive else None,
        detached=record.detached, log_path=record.log_path, command=record.command,
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
            logs = sorted(logs_dir(root).glob(f"{dir_name}-*.log"), key=lambda p: p.stat().st_mtime)
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


# ------------------------------------------------------------------ deployment output

DOCKER_IMAGE = "vllm/vllm-openai"


def _split_serve_argv(argv: list[str]) -> tuple[str, list[str]]:
    """``[vllm, serve, MODEL, flags...]`` -> (MODEL, flags)."""
    if len(argv) < 3 or Path(argv[0]).name != "vllm" or argv[1] != "serve":
        raise UsageError("not a `vllm serve` command", shlex.join(argv[:3]), "this is a bug in vmm")
    return argv[2], list(argv[3:])


def _set_flag(flags: list[str], name: str, value: str) -> list[str]:
    out, i, done = [], 0, False
    while i < len(flags):
        if flags[i] == name and i + 1 < len(flags):
            out += [name, value]
            i, done = i + 2, True
            continue
        if flags[i].startswith(name + "="):
            out.append(f"{name}={value}")
            i, done = i + 1, True
            continue
        out.append(flags[i])
        i += 1
    return out if done else out + [name, value]


def _flag_value(flags: list[str], name: str) -> str | None:
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith(name + "="):
            return flag.split("=", 1)[1]
    return None


def emit_docker(argv: list[str], root: Path, model_dir: Path, vllm_version: str | None = None,
                name: str | None = None, env: dict[str, str] | None = None) -> str:
    """A ``docker run`` for the official vLLM OpenAI image running the same plan.

    The models root is mounted read-only at the same path, so every path in the plan stays
    valid inside the container. The image's entrypoint is the OpenAI API server (``python3
    -m vllm.entrypoints.openai.api_server`` in older images, ``vllm serve`` in newer), and
    both take ``--model PATH``, so the model goes there rather than as a positional.
    """
    model, flags = _split_serve_argv(argv)
    port = _flag_value(flags, "--port") or "8000"
    flags = _set_flag(flags, "--host", "0.0.0.0")
    tag = f"v{vllm_version}" if vllm_version else "latest"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = "all" if not visible else f'"device={visible}"'
    lines = [
        "docker run -d",
        f"--name {shlex.quote(name or 'vmm-' + model_dir.name.lower())}",
        "--restart unless-stopped",
        f"--gpus {shlex.quote(gpus)}",
        "--ipc=host",
        f"-p {port}:{port}",
        f"-v {shlex.quote(f'{root}:{root}:ro')}",
        "-e VLLM_NO_USAGE_STATS=1",
        "-e HF_HUB_OFFLINE=1",
    ]
    for key, value in sorted((env or {}).items()):
        lines.append(f"-e {shlex.quote(f'{key}={value}')}")
    lines.append(f"{DOCKER_IMAGE}:{tag}")
    lines.append(f"--model {shlex.quote(model)}")
    pairs: list[str] = []
    i = 0
    while i < len(flags):
        if flags[i].startswith("--") and "=" not in flags[i] and i + 1 < len(flags) \
                and not flags[i + 1].startswith("--"):
            pairs.append(f"{flags[i]} {shlex.quote(flags[i + 1])}")
            i += 2
        else:
            pairs.append(shlex.quote(flags[i]))
            i += 1
    lines += pairs
    return " \\\n  ".join(lines) + "\n"


def _systemd_quote(arg: str) -> str:
    """Quote one ExecStart word (systemd.syntax: '%' is a specifier, '$' expands variables)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in ' \t"\'\\;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def emit_systemd(argv: list[str], model: str, root: Path, vllm_path: str | None = None,
                 env: dict[str, str] | None = None, user: str | None = None) -> str:
    """A systemd unit running the same plan, restarted on failure, stopped with SIGTERM."""
    command = list(argv)
    command[0] = vllm_path or command[0]
    environment = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        environment.setdefault("CUDA_VISIBLE_DEVICES", visible)
    lines = [
        "[Unit]",
        f"Description=vLLM serving {model} (generated by vmm)",
        "After=network-online.target",
        "Wants=network-online.target",
        f"RequiresMountsFor={root}",
        "",
        "[Service]",
        "Type=simple",
    ]
    if user:
        lines.append(f"User={user}")
    for key, value in sorted(environment.items()):
        lines.append(f"Environment={_systemd_quote(f'{key}={value}')}")
    lines += [
        "ExecStart=" + " ".join(_systemd_quote(a) for a in command),
        "Restart=on-failure",
        "RestartSec=10",
        # vLLM shuts down gracefully on SIGTERM; model loading can take minutes.
        "KillSignal=SIGTERM",
        "KillMode=control-group",
        "TimeoutStartSec=900",
        "TimeoutStopSec=60",
        f"ReadOnlyPaths={root}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
