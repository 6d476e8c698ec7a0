"""Placement on this host: which GPUs a new server gets, how much of them, which port; and
the "will it fit?" verdict that ``vmm pull --fit`` gives before any weight is downloaded.

Room on a GPU = free memory now (nvidia-smi / NVML: every process) less what live vmm
servers planned there but do not hold yet (a server still starting). What a vmm server holds
comes from the driver's per-process list (``--query-compute-apps``), matched to the server's
session (vmm starts vLLM in its own session, so its engine and workers share the session id);
where the driver lists no processes (some containers), none is assumed held: cautious. vLLM's ``--gpu-memory-utilization`` is a fraction
of *total* memory that vLLM checks against *free* memory at start-up
(``request_memory`` in ``vllm/v1/worker/utils.py``, 0.32: "Free memory on device ... is less
than desired GPU memory utilization"), so on a shared GPU the fraction is computed from what
is really free, less a margin, instead of vLLM's default 0.92.
"""

from __future__ import annotations

import itertools
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core.errors import IncompatibleError, UsageError
from vmm.core.serving import gpu as gpu_mod
from vmm.core.serving import planner, request, runtime
from vmm.core.serving.request import ServeRequest
from vmm.core.units import human_bytes

# Left free on a shared GPU: other processes' allocations move while vLLM starts.
SHARED_MARGIN_BYTES = 512 << 20
PORT_FIRST = 8000
PORT_TRIES = 100


@dataclass
class GpuRoom:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    vmm_bytes: int                                   # planned by live vmm servers
    vmm_servers: list[str] = field(default_factory=list)
    vmm_held_bytes: int = 0                          # what the driver says those servers hold
    other_pids: list[int] = field(default_factory=list)

    @property
    def room_bytes(self) -> int:
        return max(0, self.free_bytes - max(0, self.vmm_bytes - self.vmm_held_bytes))

    @property
    def other_bytes(self) -> int:
        """Used by processes vmm did not start (and the driver's own reserve)."""
        return max(0, self.total_bytes - self.free_bytes - self.vmm_held_bytes)

    def dedicated(self, util: float) -> bool:
        return not self.vmm_servers and self.free_bytes >= util * self.total_bytes


@dataclass
class Placement:
    gpu_ids: list[int]
    plan: planner.Plan
    gpu_bytes: int                  # vLLM's budget on each chosen GPU (util x total; 0.34 alone: all)
    shared: bool                    # the fraction was computed from free memory
    rooms: list[GpuRoom]


def host_rooms(root: Path | None, gpus: list[gpu_mod.GpuInfo]) -> list[GpuRoom]:
    """Each GPU's memory and the live vmm servers that planned memory on it."""
    rooms = {g.index: GpuRoom(g.index, g.name, g.total_bytes, g.free_bytes, 0) for g in gpus}
    records = runtime.live_records(root) if root is not None else []
    sessions = {r.pid for r in records}
    for proc in gpu_mod.compute_processes(gpus) or []:
        if proc.gpu_index not in rooms:
            continue
        if runtime.session_of(proc.pid) in sessions or proc.pid in sessions:
            rooms[proc.gpu_index].vmm_held_bytes += proc.used_bytes
        else:
            rooms[proc.gpu_index].other_pids.append(proc.pid)
    if records:
        for record in records:
            for index in record.gpu_ids or []:
                if index in rooms:
                    rooms[index].vmm_bytes += int(record.gpu_bytes or 0)
                    rooms[index].vmm_servers.append(f"{record.model} (port {record.port}, "
                                                    f"{human_bytes(int(record.gpu_bytes or 0))})")
    return [rooms[g.index] for g in gpus]


def _util_for(rooms: list[GpuRoom], req: ServeRequest, forced: bool = False) -> tuple[float | None, bool]:
    """The fraction for a set of GPUs, and whether it was computed from free memory.
    ``forced``: --gpu-ids with --gpu-memory-utilization, taken as given."""
    default = planner.default_gpu_memory_utilization(req.vllm_version)
    wanted = req.gpu_memory_utilization
    # "Dedicated": no vmm server there and (nearly) all memory free. vLLM >= 0.34 then sizes its
    # KV cache itself from what is free after CUDA-graph capture (None: no flag); older
    # versions get their default fraction of total memory.
    if wanted is None and all(r.dedicated(min(default, 0.92)) for r in rooms):
        return (None if planner.extensible_kv_cache(req.vllm_version) else default), False
    total = min(r.total_bytes for r in rooms)
    fits = min(r.room_bytes for r in rooms) - SHARED_MARGIN_BYTES
    if wanted is not None:
        ok = forced or wanted * total <= min(r.room_bytes for r in rooms)
        return (wanted, False) if ok else (None, True)
    util = math.floor(fits / total * 100) / 100
    return (min(util, default), True) if util >= 0.05 else (None, True)


def _try(cfg, weight_bytes, rooms, req, cc, forced=False) -> tuple[planner.Plan, float, bool] | None:
    util, shared = _util_for(rooms, req, forced)
    if util is None and shared:
        return None                 # no room
    hw = planner.Hardware("cuda", len(rooms), min(r.total_bytes for r in rooms), cc, gpu_name=rooms[0].name)
    sized = req.but(gpu_memory_utilization=util, explicit_budget=req.explicit_budget or shared)
    try:
        plan_ = planner.plan(cfg, weight_bytes, hw, sized)
    except IncompatibleError:
        return None
    if plan_.tensor_parallel_size * plan_.data_parallel_size != len(rooms):
        return None                 # it would leave some of these GPUs idle: a smaller set was tried
    return plan_, util, shared


def place(cfg, weight_bytes: int, gpus: list[gpu_mod.GpuInfo], req: ServeRequest) -> Placement:
    """The smallest set of GPUs that serves the model's whole context (tightest fit first);
    failing that, the set that serves the longest context; exit 6 naming what uses the host.
    ``req.gpu_ids`` chooses the GPUs instead; ``req.root``'s runtime records say what is taken."""
    gpu_ids = req.gpu_ids
    rooms = host_rooms(req.root, gpus)
    by_index = {r.index: r for r in rooms}
    caps = [g.compute_capability for g in gpus if g.compute_capability]
    cc = min(caps) if caps else None
    if gpu_ids is not None:
        unknown = [i for i in gpu_ids if i not in by_index]
        if unknown or not gpu_ids or len(set(gpu_ids)) != len(gpu_ids):
            raise UsageError("unknown or repeated GPU in --gpu-ids", ",".join(map(str, gpu_ids)),
                             f"this host has GPUs {', '.join(str(r.index) for r in rooms)}")
        candidates = [[by_index[i] for i in gpu_ids]]
    else:
        fixed = (req.tensor_parallel_size or 1) * (req.data_parallel_size or 1)
        sizes = [fixed] if req.tensor_parallel_size or req.data_parallel_size else range(1, len(rooms) + 1)
        candidates = [list(c) for k in sizes
                      for c in sorted(itertools.combinations(rooms, k), key=lambda c: sum(r.room_bytes for r in c))]
        if req.gpu_policy == "all":
            # every free GPU as one layout (replicas where the model fits fewer), then packing
            free = [r for r in rooms if r.dedicated(0.9)]
            if free:
                candidates.insert(0, free)
    best = None
    for chosen in candidates:
        found = _try(cfg, weight_bytes, chosen, req, cc, forced=gpu_ids is not None)
        if found is None:
            continue
        plan_, util, shared = found
        if best is None or plan_.max_model_len > best[1].max_model_len:
            best = (chosen, plan_, util, shared)
        if plan_.model_max_len is None or plan_.max_model_len >= min(
                plan_.model_max_len, req.max_model_len or plan_.model_max_len):
            break
    if best is None:
        raise _no_room(cfg, weight_bytes, gpus, rooms, req, cc, gpu_ids)
    chosen, plan_, util, shared = best
    plan_.gpu_count = len(gpus)
    if shared:
        plan_.notes.append(f"shared GPU: --gpu-memory-utilization {util:g} is what is free on GPU "
                           f"{', '.join(str(r.index) for r in chosen)} now (vLLM checks free memory at start-up)")
    total = min(r.total_bytes for r in chosen)
    budget = int(util * total) if util is not None else total - planner.KV_REDUNDANCY_BYTES
    return Placement([r.index for r in chosen], plan_, budget, shared, rooms)


def _no_room(cfg, weight_bytes, gpus, rooms, req, cc, gpu_ids) -> IncompatibleError:
    # Too big for the whole host even when empty: the planner's own reason and hints.
    empty = planner.Hardware("cuda", len(gpus) if gpu_ids is None else len(gpu_ids),
                             min(g.total_bytes for g in gpus), cc)
    planner.plan(cfg, weight_bytes, empty, req)      # raises when it can never fit
    users = []
    for r in rooms:
        who = "; ".join(r.vmm_servers) or "no vmm server"
        pids = f" pids {','.join(map(str, r.other_pids[:5]))}" if r.other_pids else ""
        users.append(f"GPU {r.index}: {human_bytes(r.room_bytes)} free of {human_bytes(r.total_bytes)} "
                     f"(vmm: {who}; other processes{pids}: {human_bytes(r.other_bytes)})")
    return IncompatibleError("no room for the model on this host's GPUs now", " | ".join(users),
                             "stop a server (`vmm stop NAME`), serve with --max-model-len or "
                             "--kv-cache-dtype fp8, or start the other servers with a lower --gpu-memory-utilization")


# ------------------------------------------------------------------ ports

def port_free(host: str, port: int) -> bool:
    """A bind test on the address vLLM will listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str, root: Path | None) -> int:
    """8000, or the next port that no vmm server holds and that binds."""
    taken = {r.port for r in runtime.live_records(root)} if root is not None else set()
    for port in range(PORT_FIRST, PORT_FIRST + PORT_TRIES):
        if port not in taken and port_free(host, port):
            return port
    raise IncompatibleError("no free port", f"{PORT_FIRST}-{PORT_FIRST + PORT_TRIES - 1} on {host}",
                            "pass --port")


# ------------------------------------------------------------------ pull --fit

@dataclass
class FitVerdict:
    fits: bool
    reason: str | None
    plan: planner.Plan | None
    alternatives: list[str]
    gpus: int
    gpu_memory_bytes: int


def verdict(cfg, weight_bytes: int, gpus: list[gpu_mod.GpuInfo], req: ServeRequest,
            gguf_variants=(), quant: str | None = None) -> FitVerdict:
    """Can this host's GPUs (all of them, empty) serve the model? With what would, if not:
    more GPUs like these, or a smaller GGUF quantization of the same repo."""
    caps = [g.compute_capability for g in gpus if g.compute_capability]
    cc = min(caps) if caps else None
    hw = planner.Hardware("cuda", len(gpus), min(g.total_bytes for g in gpus), cc)
    try:
        plan_ = planner.plan(cfg, weight_bytes, hw, req)
        return FitVerdict(True, None, plan_, [], len(gpus), hw.gpu_memory_bytes)
    except IncompatibleError as exc:
        reason = exc.which or exc.what
    alternatives = []
    for count in range(len(gpus) + 1, 65):
        if planner.valid_tp(cfg, count) is None and _plans(cfg, weight_bytes, planner.Hardware(
                "cuda", count, hw.gpu_memory_bytes, cc), req):
            alternatives.append(f"{count} GPUs like these (tensor parallel {count})")
            break
    for variant in gguf_variants:
        if variant.quant != quant and variant.size_bytes < weight_bytes and _plans(cfg, variant.size_bytes, hw, req):
            alternatives.append(f"the :{variant.quant} quantization ({human_bytes(variant.size_bytes)})")
    return FitVerdict(False, reason, None, alternatives, len(gpus), hw.gpu_memory_bytes)


def _plans(cfg, weight_bytes: int, hw: planner.Hardware, req: ServeRequest) -> bool:
    try:
        planner.plan(cfg, weight_bytes, hw, req)
        return True
    except IncompatibleError:
        return False


# ------------------------------------------------------------------ what to plan

@dataclass
class ServeTarget:
    name: str                       # Hub id or directory name
    model_dir: Path                 # where it is (or would be, once pulled)
    gguf_quant: str | None          # the :QUANT tag of the name (a GGUF file)
    remote: object | None = None    # hub.remote.RemoteModel when planned from the Hub


def resolve_target(name: str, root: Path, allow_hub: bool) -> ServeTarget:
    """The local model, else (``allow_hub``: a dry-run) the Hub model read without its weights."""
    from vmm.core import names
    from vmm.core.errors import NotFoundError
    from vmm.core.store import catalog

    try:
        model, quant = catalog.resolve_model(name, root)
        return ServeTarget(model.name, model.path, quant)
    except NotFoundError:
        if not allow_hub or name.startswith((".", "/", "~")) or "/" not in name:
            raise
    from vmm.core.hub import remote

    ref = names.parse_model_name(name)
    found = remote.read_remote_model(name)
    return ServeTarget(ref.repo_id, root / ref.dir_name, found.quant, found)


def parse_gpu_ids(text: str | None) -> list[int] | None:
    """``--gpu-ids 0,1`` -> [0, 1]; exit 2 when malformed."""
    if text is None:
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or any(i < 0 for i in ids):
        raise UsageError("malformed --gpu-ids", repr(text), "give GPU indices as shown by nvidia-smi, e.g. 0,1")
    return ids


def pull_check(name: str, revision: str | None, strict: bool) -> FitVerdict | None:
    """Before a pull: can this host's GPUs serve the model? Read from the Hub without weights.

    ``strict`` (``pull --fit``): exit 6 with the reason and what would fit, before any weight
    byte is written; also exit 6 without a GPU. Otherwise a verdict to warn with, or None when
    there is no GPU or the Hub cannot say (the pull reports its own errors).
    """
    from vmm.core.errors import VmmError
    from vmm.core.hub import remote

    gpus = gpu_mod.discover()
    if not gpus:
        if strict:
            raise IncompatibleError("no GPU found to check the fit against", name,
                                    "drop --fit on a host without GPUs, or plan with `vmm serve NAME --dry-run --gpus N --gpu-memory SIZE`")
        return None
    try:
        model = remote.read_remote_model(name, revision)
        result = verdict(model.cfg, model.weights.weight_bytes or 0, gpus, request.plan_only(),
                         model.gguf_variants, model.quant)
    except VmmError:
        if strict:
            raise
        return None
    if strict and not result.fits:
        what = ", ".join(result.alternatives + ["a quantized variant (AWQ/GPTQ/FP8/GGUF)"])
        raise IncompatibleError("the model will not fit this host's GPUs", f"{name}: {result.reason}",
                                f"nothing was downloaded; what would fit: {what}")
    return result
