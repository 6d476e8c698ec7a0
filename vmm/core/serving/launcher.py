"""``vmm serve``: turn a plan into a ``vllm serve`` command and run it until it is healthy.

vLLM runs as a child in its own session (its engine and worker processes form one process
group that signals reach together). The model's shared lock is taken on a file descriptor
that the child inherits, so the lock lives exactly as long as vLLM does: ``rm`` and ``gc``
get exit 8 while it serves, attached or ``--detach``ed.
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
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core import settings
from vmm.core.model import config as config_mod
from vmm.core.model import formats
from vmm.core.serving import gpu, planner, runtime, vllm_env
from vmm.core.store import locking, manifests, paths
from vmm.core.errors import BusyError, IncompatibleError, UsageError, VmmError

# Methods vLLM applies at load time to an unquantized checkpoint (vLLM 0.33 docs: "online"
# dynamic quantization); every other method needs a checkpoint already in that format.
ONLINE_QUANTIZATION = ("fp8", "experts_int8", "ptpc_fp8")

HINTS = (
    ("CUDA out of memory", "lower --gpu-memory-utilization or --max-model-len, or plan more GPUs (--gpus)"),
    ("out of memory", "lower --max-model-len or free memory"),
    ("Address already in use", "the port is taken: pass another --port"),
    ("are not supported for now", "vLLM cannot serve this architecture: run `vmm check NAME`"),
    ("is not supported", "run `vmm check NAME` for vLLM compatibility"),
    ("trust_remote_code", "the model needs custom code: add --trust-remote-code if you trust it"),
)


@dataclass
class ServeRequest:
    name: str
    model_dir: Path
    served_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"             # auto, cuda, cpu
    gpus: int | None = None
    gpu_memory: str | None = None
    nodes: int = 1
    quant: str | None = None
    tokenizer: str | None = None
    quantization: str | None = None
    trust_remote_code: bool = False
    options: planner.PlanOptions = field(default_factory=planner.PlanOptions)
    passthrough: list[str] = field(default_factory=list)


@dataclass
class ServeCommand:
    argv: list[str]
    env: dict[str, str]
    plan: planner.Plan
    model_path: str                  # the directory, or the .gguf file
    fmt: str
    notes: list[str]
    ray_commands: list[str] = field(default_factory=list)

    def document(self) -> dict:
        p = self.plan
        return {"command": self.argv, "tensor_parallel_size": p.tensor_parallel_size,
                "pipeline_parallel_size": p.pipeline_parallel_size, "max_model_len": p.max_model_len,
                "gpu_memory_utilization": p.gpu_memory_utilization,
                "estimate": {"weight_bytes": p.weight_bytes, "kv_cache_bytes_per_token": p.kv_cache_bytes_per_token,
                             "gpu_count": p.gpu_count, "gpu_memory_bytes": p.gpu_memory_bytes,
                             "kv_cache_bytes": p.kv_cache_bytes, "kv_cache_tokens": p.kv_cache_tokens,
                             "overhead_bytes": p.overhead_bytes},
                "device": p.device, "dtype": p.dtype, "model_max_len": p.model_max_len,
                "format": self.fmt, "env": self.env, "notes": self.notes, "ray_commands": self.ray_commands}


def hardware_for(req: ServeRequest, install: vllm_env.VllmInstall | None) -> planner.Hardware:
    if req.device == "cpu" or (req.device == "auto" and req.gpus is None and install is not None
                               and install.is_cpu):
        memory = planner.parse_size(req.gpu_memory) if req.gpu_memory else planner.host_memory_bytes()
        return planner.Hardware("cpu", 0, memory, source="host")
    if req.gpus is not None or req.gpu_memory is not None:
        if req.gpus is None or req.gpu_memory is None:
            raise UsageError("--gpus and --gpu-memory go together", "planning for other hardware",
                             "give both, e.g. --gpus 2 --gpu-memory 24GiB")
        if req.gpus < 1:
            raise UsageError("--gpus must be at least 1", str(req.gpus), "or use --device cpu")
        return planner.Hardware("cuda", req.gpus, planner.parse_size(req.gpu_memory), None, req.nodes, "given")
    found = gpu.discover()
    if not found:
        raise IncompatibleError("no GPU found", "nvidia-smi/NVML see none (or CUDA_VISIBLE_DEVICES hides them)",
                                "plan for other hardware with --gpus N --gpu-memory SIZE, or use --device cpu")
    smallest = min(g.total_bytes for g in found)
    caps = [g.compute_capability for g in found if g.compute_capability]
    return planner.Hardware("cuda", len(found), smallest, min(caps) if caps else None, req.nodes)


def apply_passthrough(argv: list[str], extra: list[str]) -> list[str]:
    """Arguments after ``--`` override the computed ones (replaced, never duplicated)."""
    out = list(argv)
    i = 0
    while i < len(extra):
        word = extra[i]
        if word.startswith("--") and "=" in word:
            flag, value = word.split("=", 1)
            _remove_flag(out, flag)
            out.append(word)
            i += 1
        elif word.startswith("-") and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            _remove_flag(out, word)
            out += [word, extra[i + 1]]
            i += 2
        else:
            if word not in out:
                out.append(word)
            i += 1
    return out


def _remove_flag(argv: list[str], flag: str) -> None:
    for i, word in enumerate(argv):
        if word == flag:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            del argv[i:i + (2 if has_value else 1)]
            return
        if word.startswith(flag + "="):
            del argv[i]
            return


def build(req: ServeRequest, install: vllm_env.VllmInstall | None = None) -> ServeCommand:
    """The plan and the exact argv, without running anything (``--dry-run``)."""
    cfg = config_mod.read_model_config(req.model_dir)
    fmt = formats.detect_format(req.model_dir)
    weights = formats.weight_summary(req.model_dir, req.quant)
    notes: list[str] = []
    quant_cfg = (cfg.quantization or {}).get("quant_method")
    if req.quantization and quant_cfg and req.quantization.lower() != str(quant_cfg).lower():
        raise UsageError("--quantization disagrees with the checkpoint", f"{req.quantization} vs {quant_cfg}",
                         "drop --quantization: vLLM reads it from the checkpoint")
    if req.quantization and not quant_cfg and req.quantization.lower() not in ONLINE_QUANTIZATION:
        raise UsageError("--quantization names a checkpoint format this model is not in",
                         f"{req.quantization} on an unquantized checkpoint",
                         f"use a {req.quantization} variant of the model, or online {', '.join(ONLINE_QUANTIZATION)}")
    opts = req.options
    if install is not None and opts.vllm_version is None:
        opts.vllm_version = install.version
    hw = hardware_for(req, install)
    plan = planner.plan(cfg, weights.weight_bytes, hw, opts)
    notes += plan.notes
    model_path = str(req.model_dir)
    if fmt == "gguf":
        chosen = formats.select_gguf(req.model_dir, req.quant)
        model_path = str(chosen.path)
        notes.append("GGUF: vLLM >= 0.24 serves it only with the vllm-gguf-plugin package installed")
    argv = ["vllm", "serve", model_path, "--served-model-name", req.served_name, "--host", req.host,
            "--port", str(req.port), "--max-model-len", str(plan.max_model_len)]
    if plan.device == "cpu":
        argv += ["--kv-cache-memory-bytes", str(plan.kv_cache_bytes), "--enforce-eager"]
    else:
        argv += ["--tensor-parallel-size", str(plan.tensor_parallel_size),
                 "--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
        if plan.pipeline_parallel_size > 1:
            argv += ["--pipeline-parallel-size", str(plan.pipeline_parallel_size),
                     "--distributed-executor-backend", "ray"]
        if opts.enforce_eager:
            argv.append("--enforce-eager")
    if plan.dtype:
        argv += ["--dtype", plan.dtype]
    if opts.kv_cache_dtype:
        argv += ["--kv-cache-dtype", opts.kv_cache_dtype]
    if req.quantization:
        argv += ["--quantization", req.quantization]
    if req.trust_remote_code:
        argv.append("--trust-remote-code")
    elif cfg.auto_map:
        notes.append("config.json has auto_map (custom code): vLLM may need --trust-remote-code")
    if fmt == "gguf":
        tokenizer = req.tokenizer or _gguf_base_model(Path(model_path))
        if tokenizer:
            argv += ["--tokenizer", tokenizer]
        else:
            notes.append("GGUF without a base model in its metadata: pass --tokenizer ORG/BASE "
                         "(converting the GGUF tokenizer is slow and lossy)")
        template = req.model_dir / "chat_template.jinja"
        if template.is_file():     # transformers does not read chat_template.jinja for a .gguf
            argv += ["--chat-template", str(template)]
    elif req.tokenizer:
        argv += ["--tokenizer", req.tokenizer]
    argv = apply_passthrough(argv, req.passthrough)
    ray = []
    if plan.pipeline_parallel_size > 1:
        ray = ["ray start --head --port 6379   # on this node, before vmm serve",
               *[f"ray start --address <this-node-ip>:6379   # on node {n + 1}"
                 for n in range(1, plan.pipeline_parallel_size)]]
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    return ServeCommand(argv, env, plan, model_path, fmt, notes, ray)


def _gguf_base_model(path: Path) -> str | None:
    try:
        from vmm.core.model import gguf_meta

        meta = gguf_meta.read_gguf(path).metadata
    except (VmmError, OSError, AttributeError):
        return None
    url = meta.get("general.base_model.0.repo_url")
    if isinstance(url, str) and "huggingface.co/" in url:
        return url.split("huggingface.co/", 1)[1].strip("/")
    org, name = meta.get("general.base_model.0.organization"), meta.get("general.base_model.0.name")
    return f"{org}/{name}" if isinstance(org, str) and isinstance(name, str) else None


# ------------------------------------------------------------------ running

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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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


def run(cmd: ServeCommand, req: ServeRequest, root: Path, detach: bool = False, ready_timeout_s: float = 900,
        on_wait=None, on_ready=None, on_line=None, on_hint=None) -> int:
    """Start vLLM, wait until it answers a real request, then (attached) wait for it to end;
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
    log_path = runtime.logs_dir(root) / f"{req.model_dir.name}-{req.port}.log" if detach else None
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
        record = runtime.record_for(req.name, req.model_dir, child.pid, req.host, req.port, argv, log_path, detach)
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


def _supervise(child: subprocess.Popen, base: str, req: ServeRequest, forwarder: _Forwarder,
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
