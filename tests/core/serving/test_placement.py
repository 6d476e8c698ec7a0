"""Several models on one host: GPU choice from free memory and vmm's own servers, ports,
refusal naming what uses the host; with a fake nvidia-smi and the fake vllm."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import builders as b
import fakegpu
from conftest import REPO, assert_error_line, run_vmm
from vmm.core.errors import IncompatibleError, UsageError
from vmm.core.model import config as config_mod
from vmm.core.serving import fit, gpu, planner
from vmm.core.serving.request import plan_only

GIB = 1 << 30
MIB = 1 << 20
FAKE_VLLM = REPO / "tests" / "fakevllm"
QWEN = config_mod.from_config_dict(b.QWEN2_7B_INSTRUCT)
QWEN_BYTES = b.QWEN2_7B_INSTRUCT_PARAMETERS * 2


def h100(index: int, free_mib: int = 81000) -> gpu.GpuInfo:
    return gpu.GpuInfo(index, "NVIDIA H100 80GB HBM3", 81559 * MIB, free_mib * MIB, "9.0")


# ------------------------------------------------------------------ the choice, as a function

def test_an_empty_host_gives_the_smallest_set_with_vllms_default_fraction():
    p = fit.place(QWEN, QWEN_BYTES, [h100(0), h100(1)], plan_only())
    assert p.gpu_ids == [0] and p.plan.gpu_memory_utilization == 0.92 and not p.shared
    assert p.plan.max_model_len == 32768


def test_gpu_policy_all_takes_every_free_gpu_as_replicas_and_pack_the_fewest():
    gpus = [h100(0), h100(1), h100(2, 81559 - 40 * 1024), h100(3)]
    packed = fit.place(QWEN, QWEN_BYTES, gpus, plan_only())
    assert packed.gpu_ids == [2] and packed.plan.data_parallel_size == 1            # the tightest fit
    every = fit.place(QWEN, QWEN_BYTES, gpus, plan_only(gpu_policy="all"))
    assert every.gpu_ids == [0, 1, 3] and every.plan.data_parallel_size == 3      # GPU 2 is in use
    assert every.gpu_bytes == int(0.92 * 81559 * MIB)


def test_vllm_034_alone_on_its_gpus_sizes_its_own_cache_a_shared_gpu_gets_a_budget():
    alone = fit.place(QWEN, QWEN_BYTES, [h100(0), h100(1)], plan_only(vllm_version="0.34.0"))
    assert alone.plan.gpu_memory_utilization is None and not alone.shared
    assert alone.gpu_bytes == 81559 * MIB - planner.KV_REDUNDANCY_BYTES
    shared = fit.place(QWEN, QWEN_BYTES, [h100(0, 81559 - 40 * 1024)], plan_only(vllm_version="0.34.0"))
    assert shared.shared and shared.plan.gpu_memory_utilization == 0.49


def test_a_gpu_another_process_uses_gets_a_fraction_of_what_is_free():
    # GPU 0: 40 GiB used by something else; GPU 1: 70 GiB used: its 9.6 GiB free cannot hold
    # 14.2 GiB of weights, GPU 0's 41.6 GiB can.
    gpus = [h100(0, 81559 - 40 * 1024), h100(1, 81559 - 70 * 1024)]
    p = fit.place(QWEN, QWEN_BYTES, gpus, plan_only())
    assert p.gpu_ids == [0] and p.shared
    util = p.plan.gpu_memory_utilization
    assert util * 81559 * MIB <= gpus[0].free_bytes - fit.SHARED_MARGIN_BYTES      # vLLM's start-up check passes
    assert util == math.floor((gpus[0].free_bytes - fit.SHARED_MARGIN_BYTES) / (81559 * MIB) * 100) / 100 == 0.49


def test_the_tightest_gpu_that_holds_the_whole_context_wins():
    gpus = [h100(0, 81559 - 40 * 1024), h100(1, 81559 - 60 * 1024)]      # 41.6 and 21.6 GiB free
    p = fit.place(QWEN, QWEN_BYTES, gpus, plan_only())
    assert p.gpu_ids == [1] and p.plan.max_model_len == 32768


def test_gpu_ids_override_and_bad_ids_are_usage_errors():
    p = fit.place(QWEN, QWEN_BYTES, [h100(0), h100(1)], plan_only(gpu_ids=[1, 0]))
    # a 15 GB model on two 80 GB GPUs: two replicas, both GPUs used
    assert p.gpu_ids == [1, 0] and (p.plan.tensor_parallel_size, p.plan.data_parallel_size) == (1, 2)
    with pytest.raises(UsageError):
        fit.place(QWEN, QWEN_BYTES, [h100(0)], plan_only(gpu_ids=[3]))
    with pytest.raises(UsageError):
        fit.parse_gpu_ids("0,x")


def test_no_room_names_the_users_and_too_big_keeps_the_planners_reason():
    full = [h100(0, 2048), h100(1, 1024)]
    with pytest.raises(IncompatibleError) as exc:
        fit.place(QWEN, QWEN_BYTES, full, plan_only())
    assert "no room" in exc.value.what and "other processes: 77.6 GiB" in exc.value.which
    with pytest.raises(IncompatibleError) as exc:
        fit.place(QWEN, 200 * GIB, [h100(0), h100(1)], plan_only())
    assert "does not fit these GPUs" in exc.value.what and "would fit" in exc.value.hint


def test_pull_verdict_names_more_gpus_and_smaller_gguf_quants():
    from vmm.core.hub.remote import GgufVariant

    small = [gpu.GpuInfo(0, "NVIDIA L4", 23034 * MIB, 23000 * MIB, "8.9")]
    v = fit.verdict(QWEN, 30 * GIB, small, plan_only(),
                    [GgufVariant("Q4_K_M", ["m-Q4_K_M.gguf"], 5 * GIB), GgufVariant("F16", ["m-F16.gguf"], 30 * GIB)],
                    quant="F16")
    assert not v.fits and "weights 30.0 GiB" in v.reason
    assert v.alternatives == ["2 GPUs like these (tensor parallel 2)", "the :Q4_K_M quantization (5.0 GiB)"]
    assert fit.verdict(QWEN, QWEN_BYTES, small, plan_only()).fits


# ------------------------------------------------------------------ with the fake vllm and nvidia-smi

@pytest.fixture
def host(root, tmp_path):
    """2 x H100 (one with 4 GiB used by another process), four 7B models, fake vllm on PATH."""
    bin_dir = tmp_path / "bin"
    fakegpu.install(bin_dir, [(0, "NVIDIA H100 80GB HBM3", 81559, 81559 - 4096, "9.0"),
                              (1, "NVIDIA H100 80GB HBM3", 81559, 81559, "9.0")])
    for name in ("org/a", "org/b", "org/c", "org/d"):
        b.make_model(root, name, cfg=b.QWEN2_7B_INSTRUCT, shards=2)
    env = {"PATH": f"{bin_dir}{os.pathsep}{FAKE_VLLM}{os.pathsep}{os.environ['PATH']}", "VMM_ROOT": str(root),
           "FAKE_VLLM_RECORD": str(tmp_path / "last.json")}
    yield env
    subprocess.run([sys.executable, "-m", "vmm", "stop", "--all", "--timeout", "5"], env={**os.environ, **env},
                   capture_output=True, timeout=60)


def _vmm(env, *args):
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL, timeout=120)


def _serve(env, name, *extra):
    run = _vmm(env, "serve", name, "--device", "cuda", "--detach", "--max-model-len", "8192", *extra)
    assert run.returncode == 0, run.stderr
    seen = json.loads(Path(env["FAKE_VLLM_RECORD"]).read_text())
    return seen


def _ps(env):
    return {s["model"]: s for s in json.loads(_vmm(env, "ps", "--json", "--interval", "0").stdout)["servers"]}


def test_three_models_on_two_gpus_land_where_they_fit_a_fourth_is_refused_until_one_stops(host):
    env = host
    a = _serve(env, "org/a", "--gpu-memory-utilization", "0.4")
    assert a["env"]["CUDA_VISIBLE_DEVICES"] == "0"              # the tighter GPU that holds it
    b_ = _serve(env, "org/b")                                    # shares GPU 0: a fraction of what is left
    assert b_["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    util_b = float(b_["argv"][b_["argv"].index("--gpu-memory-utilization") + 1])
    assert 0.4 + util_b < 0.96 and util_b > 0.4
    c = _serve(env, "org/c")                                     # GPU 0 is full now: GPU 1, default fraction
    assert c["env"]["CUDA_VISIBLE_DEVICES"] == "1" and "0.92" in c["argv"]
    ports = {int(s["port"]) for s in _ps(env).values()}
    assert len(ports) == 3                                        # no --port: each got a free one
    ps = _ps(env)
    assert ps["org/a"]["gpu_ids"] == [0] and ps["org/c"]["gpu_ids"] == [1]
    assert ps["org/a"]["gpu_bytes"] == int(0.4 * 81559 * MIB)
    table = _vmm(env, "ps", "--interval", "0").stdout
    assert "gpus" in table and "gpu mem" in table

    refused = _vmm(env, "serve", "org/d", "--device", "cuda", "--detach", "--max-model-len", "8192")
    assert refused.returncode == 6, refused.stderr
    line = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")][0]
    assert "no room" in line and "org/a (port" in line and "org/c (port" in line and "vmm stop" in line

    stop = _vmm(env, "stop", "org/c")
    assert stop.returncode == 0, stop.stderr
    d = _serve(env, "org/d")                                     # stopped servers free their GPUs
    assert d["env"]["CUDA_VISIBLE_DEVICES"] == "1"


def test_dry_run_shows_the_choice_and_gpu_ids_override(host):
    env = host
    run = _vmm(env, "serve", "org/a", "--device", "cuda", "--dry-run", "--gpu-ids", "1")
    assert run.returncode == 0, run.stderr
    assert "GPUs chosen         1 (CUDA_VISIBLE_DEVICES)" in run.stdout and "chosen" in run.stdout
    assert_error_line(run_vmm("serve", "org/a", "--dry-run", "--gpu-ids", "7", env={"PATH": env["PATH"]}),
                      2, "--gpu-ids")
    assert_error_line(run_vmm("serve", "org/a", "--dry-run", "--gpus", "2", "--gpu-memory", "80GiB",
                              "--gpu-ids", "0"), 2, "--gpu-ids")


def test_a_taken_port_8000_moves_the_server_to_the_next_free_one(host):
    import socket

    env = host
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8000))
        holder.listen()
    except OSError:
        pass                       # something else holds 8000 already: the same situation
    try:
        seen = _serve(env, "org/a")
        port = int(seen["argv"][seen["argv"].index("--port") + 1])
        assert port != 8000 and fit.port_free("127.0.0.1", port) is False
    finally:
        holder.close()


def test_memory_a_running_vmm_server_holds_is_not_counted_twice(tmp_path, monkeypatch):
    """GPU 0 shows 30 GiB used by vmm's own server (its session), planned 32 GiB: the room is
    what is free less the 2 GiB it has yet to take; another process's memory is only free's."""
    from vmm.core.serving import runtime

    root = tmp_path / "models"
    rec = runtime.record_for("org/a", root / "org--a", os.getpid(), "127.0.0.1", 8000, ["vllm"], gpu_ids=[0],
                             gpu_bytes=32 * GIB)
    runtime.register(root, rec)
    monkeypatch.setattr(gpu, "compute_processes", lambda gpus: [gpu.GpuProcess(0, os.getpid(), 30 * GIB),
                                                                 gpu.GpuProcess(0, 1, 5 * GIB)])
    rooms = fit.host_rooms(root, [h100(0, 81559 - 35 * 1024)])
    r = rooms[0]
    assert r.vmm_held_bytes == 30 * GIB and r.other_pids == [1]
    assert r.room_bytes == r.free_bytes - 2 * GIB
    assert r.other_bytes == 81559 * MIB - r.free_bytes - 30 * GIB
    monkeypatch.setattr(gpu, "compute_processes", lambda gpus: None)    # a container: nothing listed
    assert fit.host_rooms(root, [h100(0, 81559 - 35 * 1024)])[0].room_bytes == r.free_bytes - 32 * GIB


def test_malformed_gpu_ids_are_exit_2(root):
    b.make_model(root, "org/a", cfg=b.QWEN2_7B_INSTRUCT, shards=2)
    for bad in ("x", "0,,-1", ""):
        assert_error_line(run_vmm("serve", "org/a", "--dry-run", "--gpu-ids", bad), 2, "--gpu-ids")
