"""Running ``vllm serve``: start it, wait until it answers, forward signals, map exit codes.

vLLM runs as a child in its own session (its engine and worker processes form one process
group that signals reach together). The model's shared lock is taken on a file descriptor
that the child inherits, so the lock lives exactly as long as vLLM does: ``rm`` and ``gc``
get exit 8 while it serves, attached or ``--detach``ed. Nothing here writes to a terminal:
vLLM's lines and hints go to callbacks the CLI renders. Exit codes: docs/exit-codes.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from vmm.core import settings
from vmm.core.errors import BusyError, IncompatibleError
from vmm.core.serving import runtime, vllm_env
from vmm.core.store import locking, manifests, paths

HINTS = (
    ("CUDA out of memory", "lower --gpu-memory-utilization or --max-model-len, or plan more GPUs (--gpus)"),
    ("out of memory", "lower --max-model-len or free memory"),
    ("Address already in use", "the port is taken: pass another --port"),
    ("are not supported for now", "vLLM cannot serve this architecture: run `vmm check NAME`"),
    ("is not supported", "run `vmm check NAME` for vLLM compatibility"),
    ("trust_remote_code", "the model needs custom code: add --trust-remote-code if you trust it"),
)



def _hint(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    for needle, hint in HINTS:
        if needle in text:
            return hint
    return None


class VllmExited(IncompatibleError):
    """vLLM ended on its own before it was ready: exit 6 (it cannot serve this model here),
    with vLLM's own exit code and its last lines in the message. vLLM's start-up codes
    (1, 2, 3, ...) would otherwise read as vmm's own (bug, usage, not found)."""

    def __init__(self, code: int, tail: list[str], log_path: Path | None = None) -> None:
        self.vllm_exit_code = code
        which = f"exit code {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        last = [" ".join(line.split())[:200] for line in tail if line.strip()][-3:]
        if last:
            which += ": " + " | ".join(last)
        seen = f"see {log_path}" if log_path else "see vLLM's output above"
        super().__init__("vLLM exited during start-up", which, _hint(tail) or seen)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N: 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


class _Forwarder:
    """The operator's SIGINT/SIGTERM, forwarded to vLLM's process group: the first signal as
    it came, a second one as SIGKILL. Installed before vLLM starts, so a signal that arrives
    while it is being started is not lost."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.first: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def attach(self, child: subprocess.Popen) -> None:
        self.child = child
        if self.count:
            self._send()

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        if self.child is not None:
            self._send()

    def _send(self) -> None:
        sig = self.first if self.count == 1 else signal.SIGKILL
        try:
            os.killpg(self.child.pid, sig)
        except ProcessLookupError:
            pass

    def startup_code(self, returncode: int) -> int:
        """vmm's exit code when the operator stopped vLLM before it was ready."""
        return 130 if self.first == signal.SIGINT else exit_status(returncode)


def _take_lock(root: Path, dir_name: str) -> int:
    path = paths.lock_path(root, dir_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)      # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = locking.read_lock_info(root, dir_name) or {}
        raise BusyError("model is locked by another vmm process",
                        f"{dir_name}: pid {holder.get('pid', '?')} ({holder.get('purpose', '?')})",
                        "wait for the pull or rm to finish") from None
    return fd


def _first_request(base: str, served: str, timeout_s: float) -> tuple[IncompatibleError | None, bool]:
    """One real 1-token completion: /health can answer while the engine cannot run a request
    (on CPU, an unsupported head size dies on the first one). Returns the failure (None when
    it answered) and whether the connection dropped (a server going away does that)."""
    body = json.dumps({"model": served, "prompt": "ready?", "max_tokens": 1}).encode()
    request = urllib.request.Request(f"{base}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    failed = "vLLM is up but a first request failed"
    try:
        with urllib.request.urlopen(request, timeout=max(30.0, timeout_s)) as response:
            if response.status != 200:
                return IncompatibleError(failed, f"HTTP {response.status}", "see vLLM's output above"), False
    except urllib.error.HTTPError as exc:
        return IncompatibleError(failed, f"HTTP {exc.code}", "see vLLM's output above"), False
    except (OSError, urllib.error.URLError) as exc:
        return IncompatibleError(failed, str(exc), "see vLLM's output above"), True
    return None, False


def _ready(base: str, served: str, child: subprocess.Popen, timeout_s: float, on_wait,
           stopping) -> bool:
    """Wait for /health, then a first request. False when vLLM ended or ``stopping()`` (the
    operator's signal) made waiting moot; True when it is ready."""
    deadline = time.monotonic() + timeout_s
    last_note = 0.0
    while True:
        if child.poll() is not None or stopping():
            return False
        if time.monotonic() >= deadline:
            raise IncompatibleError("vLLM did not become healthy in time", base, "see its output; raise --ready-timeout")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except (OSError, urllib.error.URLError):
            pass
        if on_wait and time.monotonic() - last_note > 10:
            on_wait(f"waiting for {base}/health")
            last_note = time.monotonic()
        time.sleep(0.5)
    failure, dropped = _first_request(base, served, deadline - time.monotonic())
    if failure is None:
        return not stopping() and child.poll() is None
    if stopping():
        return False
    if dropped:
        try:
            child.wait(timeout=5)        # vLLM ending on its own drops the request first
            return False
        except subprocess.TimeoutExpired:
            pass
    raise failure


def _start(argv: list[str], env: dict[str, str], lock_fd: int, log_path: Path | None) -> subprocess.Popen:
    """vLLM in its own session (its engine and workers form one process group), holding the lock."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, pass_fds=(lock_fd,))
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, pass_fds=(lock_fd,))


def _pump(child: subprocess.Popen, tail: deque, on_line) -> threading.Thread:
    """Hand every line vLLM prints to ``on_line`` (the CLI shows it), keeping the last ones."""
    def copy_output() -> None:
        for raw in iter(child.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if on_line:
                on_line(line)
    thread = threading.Thread(target=copy_output, daemon=True)
    thread.start()
    return thread


def run(cmd: Any, req: Any, root: Path, detach: bool = False, ready_timeout_s: float = 900,
        on_wait=None, on_ready=None, on_line=None, on_hint=None) -> int:
    """Run ``cmd`` (a :class:`~vmm.core.serving.launcher.ServeCommand`) for ``req`` (its
    :class:`~vmm.core.serving.request.ServeRequest`).

    Start vLLM, wait until it answers a real request, then (attached) wait for it to end;
    (detached) return 0 once ready. Never writes to a terminal: vLLM's lines go to
    ``on_line(text)``, a hint about its failure to ``on_hint(text)``, the URL to ``on_ready``.

    Exit codes (docs/exit-codes.md): the operator's SIGINT/SIGTERM is forwarded to vLLM;
    before ready, vmm then returns vLLM's code (0 on a clean stop), or 130 for SIGINT; vLLM
    ending on its own before ready raises :class:`VllmExited` (exit 6); after ready, vLLM's
    own code whatever ended it.
    """
    install = vllm_env.require_vllm()
    argv = [install.executable, *cmd.argv[1:]]
    env = settings.child_environment(cmd.env)
    log_path = paths.logs_dir(root) / f"{req.model_dir.name}-{cmd.port}.log" if detach else None
    tail: deque[str] = deque(maxlen=40)
    forwarder = _Forwarder()
    lock_fd = _take_lock(root, req.model_dir.name)
    forwarder.install()
    try:
        try:
            child = _start(argv, env, lock_fd, log_path)
        except OSError as exc:
            raise IncompatibleError("cannot start vllm", install.executable, exc.strerror or str(exc)) from exc
        finally:
            os.close(lock_fd)      # the child holds the shared lock now, for as long as it runs
        forwarder.attach(child)
        pump = None if detach else _pump(child, tail, on_line)
        record = runtime.record_for(req.name, req.model_dir, child.pid, req.host, cmd.port, argv, log_path, detach,
                                    cmd.gpu_ids, cmd.gpu_bytes)
        try:
            runtime.register(root, record)
            return _supervise(child, record.url, req, forwarder, pump, tail, log_path, ready_timeout_s,
                              on_wait, on_ready, on_hint)
        except BaseException:
            _stop_child(child)       # never leave a half-started vLLM behind
            raise
        finally:
            if not detach or child.poll() is not None:
                runtime.unregister(root, record.id)
    finally:
        forwarder.restore()


def _supervise(child: subprocess.Popen, base: str, req: Any, forwarder: _Forwarder,
               pump: threading.Thread | None, tail: deque, log_path: Path | None, ready_timeout_s: float,
               on_wait, on_ready, on_hint) -> int:
    """From a started vLLM to vmm's exit code (see :func:`run`)."""
    def collect_output() -> None:
        if pump:
            pump.join(timeout=5)
        elif log_path:
            tail.extend(runtime.tail_lines(log_path, 40))

    if not _ready(base, req.served_name, child, ready_timeout_s, on_wait, lambda: forwarder.count > 0):
        if forwarder.count:
            code = child.wait()      # a second signal turns into SIGKILL
            collect_output()
            return forwarder.startup_code(code)
        child.wait()
        collect_output()
        raise VllmExited(child.returncode, list(tail), log_path)
    manifests.touch_usage(req.model_dir, "serve")
    if on_ready:
        on_ready(base)
    if log_path is not None:
        return 0
    code = child.wait()
    collect_output()
    if code and not forwarder.count and on_hint:
        hint = _hint(list(tail))
        if hint:
            on_hint(hint)
    return exit_status(code)


def _stop_child(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    except ProcessLookupError:
        pass
