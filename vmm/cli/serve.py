"""Commands that run vLLM: serve, ps, stop, logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vmm import IMAGE
from vmm.cli.app import ExitQuietly, JsonOpt, NameArg, RootOpt, app, root_of


DEVICES = ("auto", "cuda", "cpu")
EMITS = ("docker", "systemd", "kubernetes", "kubernetes-pull", "ome", "kserve")
# Cluster outputs: planned for the cluster's GPUs and pods, not this host's placement and ports.
CLUSTER_EMITS = ("kubernetes", "kubernetes-pull", "ome", "kserve")
K8S_VOLUMES = ("pvc", "hostpath")
GPU_POLICIES = ("pack", "all")


def _check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        from vmm.core.errors import UsageError

        raise UsageError(f"unknown {flag}", value, f"use {', '.join(choices[:-1])} or {choices[-1]}")


@app.command("serve", context_settings={"allow_extra_args": True})
def serve_cmd(
    ctx: typer.Context,
    name: NameArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and the plan; start nothing.")] = False,
    json_out: JsonOpt = False,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="Plan for other GPUs than the local ones: COUNTxTYPE (8xH200, 4xH100, 2xA100-40GB, 1xL4, ...) or N with --gpu-memory.", metavar="COUNTxTYPE|N")] = None,
    gpu_memory: Annotated[Optional[str], typer.Option("--gpu-memory", help="Memory per GPU to plan for, e.g. 24GiB or 80GB (with --gpus); on CPU: host memory for vLLM.", metavar="SIZE")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Nodes: tensor parallel within a node, pipeline parallel across (Ray).")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto (GPU if found, CPU for a CPU build of vLLM), cuda or cpu.")] = "auto",
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", min=16, help="Context length to serve (default: the model's, capped by memory).")] = None,
    min_context: Annotated[Optional[int], typer.Option("--min-context", min=1, help="Fail (exit 6) rather than serve a shorter context than this.")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option("--gpu-memory-utilization", min=0.05, max=1.0, help="Fraction of each GPU's total memory vLLM may use (default: vLLM's, 0.92 since 0.20).")] = None,
    kv_cache_dtype: Annotated[Optional[str], typer.Option("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 (halves the KV bytes per token).")] = None,
    tensor_parallel_size: Annotated[Optional[int], typer.Option("--tensor-parallel-size", "-tp", min=1, help="Force a tensor-parallel size (checked for what vLLM can load); the other GPUs become data-parallel replicas.")] = None,
    data_parallel_size: Annotated[Optional[int], typer.Option("--data-parallel-size", "-dp", min=1, help="Force the number of data-parallel replicas (default: the layout the vLLM recipes use).")] = None,
    expert_parallel: Annotated[Optional[bool], typer.Option("--expert-parallel/--no-expert-parallel", help="Force expert parallelism for an MoE model on or off (default: on for MLA or fp8-block MoE across GPUs).", show_default=False)] = None,
    speculative: Annotated[Optional[str], typer.Option("--speculative", help="Speculative decoding: mtp[:N] (the checkpoint's MTP layers), eagle3:REPO[:N] (a draft head), auto (where a vLLM recipe makes it the default) or none.", metavar="mtp|eagle3:REPO|auto|none")] = None,
    gpu_policy: Annotated[str, typer.Option("--gpu-policy", help="This host's GPUs: pack (the fewest that hold the context, room left for other models) or all (every free GPU, as data-parallel replicas).", metavar="pack|all")] = "pack",
    host: Annotated[str, typer.Option("--host", help="Address vLLM listens on.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Port vLLM listens on (default: 8000, or the next free one).", show_default=False)] = None,
    gpu_ids: Annotated[Optional[str], typer.Option("--gpu-ids", help="Serve on these GPUs (e.g. 0,1) instead of the ones vmm chooses.", metavar="IDS", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer repo or path (GGUF: the base model's).")] = None,
    quantization: Annotated[Optional[str], typer.Option("--quantization", help="Must agree with the checkpoint's own quantization_config.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Let vLLM run the model's custom code.")] = False,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs (less memory, slower decode).")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Return once vLLM is ready; logs go to `vmm logs NAME`.")] = False,
    emit: Annotated[Optional[str], typer.Option("--emit", help="Print a `docker run`, a systemd unit, Kubernetes manifests or an operator's resources (OME, KServe) for the same plan instead of starting (kubernetes-pull: the Job that fills the models volume).", metavar="docker|systemd|kubernetes|kubernetes-pull|ome|kserve")] = None,
    k8s_volume: Annotated[str, typer.Option("--k8s-volume", help="Kubernetes: the models root is a PersistentVolumeClaim (pvc) or the node's own directory (hostpath).", metavar="pvc|hostpath")] = "pvc",
    k8s_claim: Annotated[str, typer.Option("--k8s-claim", help="Kubernetes: the PersistentVolumeClaim holding the models root.")] = "vmm-models",
    k8s_model_image: Annotated[Optional[str], typer.Option("--k8s-model-image", metavar="REGISTRY/REPO:TAG", show_default=False, help="Kubernetes: mount this model artifact (pushed by `vmm push`) as an image volume instead of the models PVC (Kubernetes >= 1.33, ImageVolume gate; docs/kubernetes.md).")] = None,
    k8s_vmm_image: Annotated[str, typer.Option("--k8s-vmm-image", help="Kubernetes: image with vmm installed, running `vmm check` before vLLM starts and `vmm pull` in the Job (the Containerfile's; nothing is installed at pod start).")] = IMAGE,
    tool_parser: Annotated[Optional[str], typer.Option("--tool-parser", help="vLLM tool-call parser (--enable-auto-tool-choice --tool-call-parser NAME), or none; default: chosen from the model.", metavar="NAME|none")] = None,
    reasoning_parser: Annotated[Optional[str], typer.Option("--reasoning-parser", help="vLLM reasoning parser, or none; default: chosen from the model.", metavar="NAME|none")] = None,
    force: Annotated[bool, typer.Option("--force", help="Serve even a model the target vLLM cannot serve (a warning instead of exit 6).")] = False,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", min=1.0, help="Seconds to wait for vLLM to answer a first request.")] = 900.0,
    root: RootOpt = None,
) -> None:
    """Serve a model with vLLM, with parameters computed for the GPUs at hand.

    vmm picks the GPUs with room (free memory, and what its other servers planned) and a free
    port. With --dry-run a Hub model that is not in the models root is planned from its config
    and weight headers, read by HTTP Range without downloading the weights.
    Arguments after `--` go to `vllm serve` unchanged and override the computed ones.
    Tool calling and reasoning parsers are chosen from the model and its chat template.
    Exit 6 when the model does not fit or vLLM cannot serve it (unless --force), also when
    vLLM fails on its own before it is ready; 127 without vllm; stopped with Ctrl-C/SIGTERM
    before ready: 130 / vLLM's code; once ready, vLLM's own exit code.
    """
    from vmm import render
    from vmm.core.serving import fit, launcher, supervisor, vllm_env
    from vmm.core.serving.request import ServeRequest
    from vmm.core.store import paths

    _check_choice("--device", device, DEVICES)
    _check_choice("--emit", emit, EMITS)
    _check_choice("--k8s-volume", k8s_volume, K8S_VOLUMES)
    _check_choice("--gpu-policy", gpu_policy, GPU_POLICIES)
    base = root_of(root)
    model = fit.resolve_target(name, base, allow_hub=dry_run and emit is None)
    install = vllm_env.find_vllm()
    req = ServeRequest(
        name=model.name, model_dir=model.model_dir, served_name=model.name, host=host, port=port, device=device,
        gpus=gpus, gpu_memory=gpu_memory, nodes=nodes, gguf_quant=model.gguf_quant, tokenizer=tokenizer,
        quantization=quantization, trust_remote_code=trust_remote_code, max_model_len=max_model_len,
        min_context=min_context, gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size, kv_cache_dtype=kv_cache_dtype, enforce_eager=enforce_eager,
        data_parallel_size=data_parallel_size, expert_parallel=expert_parallel, speculative=speculative,
        gpu_policy=gpu_policy,
        passthrough=list(ctx.args), gpu_ids=fit.parse_gpu_ids(gpu_ids), root=base, remote=model.remote,
        tool_parser=tool_parser, reasoning_parser=reasoning_parser, force=force,
        cache_dir=paths.cache_dir(base), on_this_host=emit not in CLUSTER_EMITS)
    cmd = launcher.build(req, install)
    for line in cmd.warnings:
        render.note(f"warning: {line}")
    if emit:
        render.result(_emitted(emit, cmd, model, base, nodes, name, install,
                               k8s_volume=k8s_volume, k8s_claim=k8s_claim, k8s_vmm_image=k8s_vmm_image,
                               k8s_model_image=k8s_model_image))
        return
    if dry_run:
        if json_out:
            render.emit_json(cmd.document())
        else:
            render.serve_plan(cmd)
        return
    code = supervisor.run(cmd, req, base, detach=detach, ready_timeout_s=ready_timeout,
                        on_wait=render.note, on_ready=render.result,
                        on_line=render.note, on_hint=lambda text: render.note(f"hint: {text}"))
    if code:
        raise ExitQuietly(code)      # vLLM's code (or 130 for Ctrl-C at start-up): no error line


def _emitted(emit: str, cmd, model, base: Path, nodes: int, name: str, install, *, k8s_volume: str,
             k8s_claim: str, k8s_vmm_image: str, k8s_model_image: str | None = None) -> str:
    """The same plan as a `docker run`, a systemd unit or Kubernetes manifests."""
    from vmm.core.serving import deploy

    version = deploy.target_vllm_version(cmd, install.version if install else None)
    if emit == "docker":
        return deploy.emit_docker(cmd.argv, base, model.model_dir, version, env=cmd.env)
    if emit == "systemd":
        return deploy.emit_systemd(cmd.argv, model.name, base, install.executable if install else None, env=cmd.env)
    from vmm.core.serving import kubernetes

    plan = kubernetes.plan_from(cmd, name, model.name, model.model_dir, base, nodes, version)
    opts = kubernetes.K8sOptions(volume=k8s_volume, claim=k8s_claim, vmm_image=k8s_vmm_image,
                                 model_image=k8s_model_image)
    if emit in ("ome", "kserve"):
        from vmm.core.serving import operators

        return operators.emit_operator(emit, plan, opts)
    emitter = kubernetes.emit_kubernetes if emit == "kubernetes" else kubernetes.emit_kubernetes_pull
    return emitter(plan, opts)


@app.command("ps")
def ps_cmd(
    root: RootOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.0, max=60.0,
                                            help="Seconds between the two /metrics samples that give tokens/s (0: no rates).")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """List the vLLM servers vmm started on this host, with live figures from /metrics."""
    from vmm import render
    from vmm.core.serving import runtime

    statuses = runtime.ps(root_of(root), interval_s=interval)
    if json_out:
        render.emit_json({"servers": statuses})
        return
    render.servers_table(statuses)


@app.command("stop")
def stop_cmd(
    target: Annotated[Optional[str], typer.Argument(help="Model name or port of a server vmm started.",
                                                    metavar="NAME|PORT", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every server vmm started on this host.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.0,
                                           help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop servers gracefully (SIGTERM, then SIGKILL after --timeout)."""
    from vmm import render
    from vmm.core.serving import runtime

    results = runtime.stop(root_of(root), target, all_, timeout)
    if json_out:
        render.emit_json({"stopped": results})
    else:
        for r in results:
            state = "stopped" if r.stopped else "still running"
            render.note(f"{r.model} (pid {r.pid}, port {r.port}): {state} after {r.signal}, {r.waited_s:.1f}s")
    if any(not r.stopped for r in results):
        from vmm.core.errors import BusyError

        raise BusyError("server did not stop", ", ".join(r.id for r in results if not r.stopped),
                        "check permissions; `kill -9` the pid shown by `vmm ps`")


@app.command("logs")
def logs_cmd(
    target: Annotated[str, typer.Argument(help="Model name or port of a detached server.",
                                          metavar="NAME|PORT", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many last lines to print first.")] = 100,
    root: RootOpt = None,
) -> None:
    """Print the log of a server started with `vmm serve --detach`."""
    from vmm import render
    from vmm.core.serving import runtime

    path = runtime.log_path_for(root_of(root), target)
    shown = runtime.follow(path, lines) if follow else runtime.follow(path, lines, stop=lambda: True)
    for line in shown:
        render.result(line)
