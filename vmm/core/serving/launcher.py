"""``vmm serve``: turn a request and a plan into the exact ``vllm serve`` command.

The request is :class:`vmm.core.serving.request.ServeRequest`; :func:`build` reads the model
(config, format, weight bytes), refuses what the target vLLM cannot serve
(:func:`compat.require_supported`), plans (:mod:`planner`, or :mod:`fit` placement on this
host's GPUs), and writes the argv with the parsers (:mod:`parsers`). Running it (start, wait
until ready, signals, exit codes, output callbacks) is :mod:`vmm.core.serving.supervisor`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vmm.core.model import config as config_mod
from vmm.core.model import formats
from vmm.core.model.weights import weight_summary
from vmm.core.model import quant as quant_mod
from vmm.core.serving import compat, fit, gpu, gpu_types, multinode, parsers, planner, vllm_env
from vmm.core.serving.request import ServeRequest
from vmm.core.store import manifests
from vmm.core.errors import IncompatibleError, UsageError, VmmError

DEFAULT_PORT = 8000

@dataclass
class ServeCommand:
    argv: list[str]
    env: dict[str, str]
    plan: planner.Plan
    model_path: str                  # the directory, or the .gguf file
    fmt: str
    notes: list[str]
    ray_commands: list[str] = field(default_factory=list)
    parsers: parsers.ParserChoice | None = None
    warnings: list[str] = field(default_factory=list)
    gpu_ids: list[int] | None = None    # chosen by placement (CUDA_VISIBLE_DEVICES)
    gpu_bytes: int | None = None        # vLLM's budget per chosen GPU
    gpus: list[dict] = field(default_factory=list)   # the host's GPUs as placement saw them
    hub: dict | None = None             # plan made from the Hub: repo, commit, bytes read
    port: int = 8000
    identical: multinode.NodeRequirements | None = None   # multi-node: what every node must share

    def document(self) -> dict:
        return {"source": "hub" if self.hub else "local", "hub": self.hub, "port": self.port,
                "gpu_ids": self.gpu_ids, "gpu_bytes": self.gpu_bytes, "gpus": self.gpus,
                **self._plan_document()}

    def _plan_document(self) -> dict:
        p = self.plan
        return {"command": self.argv, "tensor_parallel_size": p.tensor_parallel_size,
                "pipeline_parallel_size": p.pipeline_parallel_size, "max_model_len": p.max_model_len,
                "gpu_memory_utilization": p.gpu_memory_utilization,
                "data_parallel_size": p.data_parallel_size, "expert_parallel": p.expert_parallel,
                "speculative_config": p.speculative_config, "kv_cache_dtype": p.kv_cache_dtype,
                "max_num_seqs": p.max_num_seqs, "max_concurrency": p.max_concurrency,
                "estimate": {"weight_bytes": p.weight_bytes, "kv_cache_bytes_per_token": p.kv_cache_bytes_per_token,
                             "gpu_count": p.gpu_count, "gpu_memory_bytes": p.gpu_memory_bytes,
                             "kv_cache_bytes": p.kv_cache_bytes, "kv_cache_tokens": p.kv_cache_tokens,
                             "overhead_bytes": p.overhead_bytes,
                             "kv_bytes_per_sequence": p.kv_bytes_per_sequence,
                             "kv_accounting": p.kv_accounting,
                             "full_attention_max_model_len": p.full_attention_max_model_len},
                "device": p.device, "dtype": p.dtype, "model_max_len": p.model_max_len,
                "format": self.fmt, "env": self.env, "notes": self.notes, "ray_commands": self.ray_commands,
                "tool_call_parser": self.parsers.tool_call_parser if self.parsers else None,
                "reasoning_parser": self.parsers.reasoning_parser if self.parsers else None,
                "parsers": self.parsers.document() if self.parsers else None, "warnings": self.warnings,
                "identical_on_every_node": self.identical.document() if self.identical else None}


def hardware_for(req: ServeRequest, install: vllm_env.VllmInstall | None,
                 found: list[gpu.GpuInfo] | None = None) -> planner.Hardware:
    """The hardware to plan for; ``found`` receives the GPUs detected (when they are used)."""
    if req.device == "cpu" or (req.device == "auto" and req.gpus is None and install is not None
                               and install.is_cpu):
        memory = planner.parse_size(req.gpu_memory) if req.gpu_memory else planner.host_memory_bytes()
        return planner.Hardware("cpu", 0, memory, source="host")
    if req.gpus is not None or req.gpu_memory is not None:
        spec = gpu_types.parse_gpus(None if req.gpus is None else str(req.gpus),
                                    planner.parse_size(req.gpu_memory) if req.gpu_memory else None)
        kind = spec.gpu_type
        return planner.Hardware("cuda", spec.count, spec.memory_bytes, spec.compute_capability, req.nodes, "given",
                                kind.name if kind else None)
    detected = gpu.discover()
    if found is not None:
        found[:] = detected
    if not detected:
        raise IncompatibleError("no GPU found", "nvidia-smi/NVML see none (or CUDA_VISIBLE_DEVICES hides them)",
                                "plan for other hardware with --gpus N --gpu-memory SIZE, or use --device cpu")
    smallest = min(g.total_bytes for g in detected)
    caps = [g.compute_capability for g in detected if g.compute_capability]
    return planner.Hardware("cuda", len(detected), smallest, min(caps) if caps else None, req.nodes,
                            gpu_name=detected[0].name)


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
    cfg, fmt, weights = _model_inputs(req)
    _check_quantization(req, cfg)
    if install is not None and req.vllm_version is None:
        req = req.but(vllm_version=install.version)
    # Exit 6 with `vmm check`'s finding when the target vLLM cannot serve it; --force: a warning.
    report = compat.require_supported(cfg, req.name, fmt, req.vllm_version, req.cache_dir, force=req.force)
    warnings = [] if report.supported else [report.forced_warning()]
    plan, placement = _plan_and_place(req, install, cfg, weights.weight_bytes)
    port = req.port if req.port is not None else (
        fit.choose_port(req.host, req.root) if req.on_this_host else DEFAULT_PORT)
    notes: list[str] = list(plan.notes)
    model_path = _model_path(req, fmt, notes)
    argv = _vllm_argv(req, cfg, fmt, plan, model_path, port, notes)
    choice = parsers.choose_for_model(req.model_dir, req.name, cfg.model_type, cfg.architectures,
                                      req.vllm_version, req.cache_dir,
                                      req.tool_parser, req.reasoning_parser, req.gguf_quant)
    argv += choice.argv()
    notes += choice.notes
    argv = apply_passthrough(argv, req.passthrough)
    ray = []
    if plan.pipeline_parallel_size > 1:
        ray = ["ray start --head --port 6379   # on this node, before vmm serve",
               *[f"ray start --address <this-node-ip>:6379   # on node {n + 1}"
                 for n in range(1, plan.pipeline_parallel_size)]]
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    identical = None
    if plan.pipeline_parallel_size > 1 or req.nodes > 1:
        identical = multinode.requirements(req.nodes, model_path, manifests.read_manifest(req.model_dir),
                                           req.vllm_version)
        env.update({k: v for k, v in identical.env.items() if v})
    cmd = ServeCommand(argv, env, plan, model_path, fmt, notes, ray, choice, warnings, port=port,
                       identical=identical)
    if placement is not None:
        # nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is "fastest first".
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in placement.gpu_ids)
        cmd.gpu_ids, cmd.gpu_bytes = placement.gpu_ids, placement.gpu_bytes
        cmd.gpus = [{"index": r.index, "name": r.name, "total_bytes": r.total_bytes, "free_bytes": r.free_bytes,
                     "vmm_bytes": r.vmm_bytes, "vmm_servers": r.vmm_servers} for r in placement.rooms]
    if req.remote is not None:
        cmd.hub = req.remote.document()
        notes.insert(0, f"planned from the Hub without its weights: `vmm pull {req.name}` before serving")
    return cmd


def _model_inputs(req: ServeRequest):
    """(config, format, weight summary): from the Hub's headers for a remote plan, else the folder."""
    if req.remote is not None:
        return req.remote.cfg, req.remote.fmt, req.remote.weights
    return (config_mod.read_model_config(req.model_dir), formats.detect_format(req.model_dir),
            weight_summary(req.model_dir, req.gguf_quant))


def _check_quantization(req: ServeRequest, cfg: config_mod.ModelConfig) -> None:
    """A --quantization must agree with the checkpoint's (vLLM refuses otherwise)."""
    quant_cfg = cfg.quant_method
    if req.quantization and quant_cfg and req.quantization.lower() != quant_cfg:
        raise UsageError("--quantization disagrees with the checkpoint", f"{req.quantization} vs {quant_cfg}",
                         "drop --quantization: vLLM reads it from the checkpoint")
    if req.quantization and not quant_cfg and req.quantization.lower() not in quant_mod.ONLINE:
        raise UsageError("--quantization names a checkpoint format this model is not in",
                         f"{req.quantization} on an unquantized checkpoint",
                         f"use a {req.quantization} variant of the model, or online {', '.join(quant_mod.ONLINE)}")


def _plan_and_place(req: ServeRequest, install, cfg, weight_bytes):
    """The plan, and on this host's detected GPUs the placement that chose them (else None)."""
    found: list[gpu.GpuInfo] = []
    hw = hardware_for(req, install, found)
    if hw.device == "cuda" and hw.source == "detected" and hw.nodes == 1 and req.on_this_host:
        if not weight_bytes:
            planner.plan(cfg, weight_bytes, hw, req)     # its "cannot size" error
        placement = fit.place(cfg, weight_bytes, found, req)
        return placement.plan, placement
    if req.gpu_ids is not None:
        raise UsageError("--gpu-ids chooses among this host's GPUs", "with --gpus/--gpu-memory, --nodes or CPU",
                         "drop --gpu-ids, or plan for the local GPUs")
    return planner.plan(cfg, weight_bytes, hw, req), None


def _model_path(req: ServeRequest, fmt: str, notes: list[str]) -> str:
    """What vLLM is given: the folder, or the chosen GGUF file."""
    if fmt != "gguf":
        return str(req.model_dir)
    notes.append("GGUF: vLLM >= 0.24 serves it only with the vllm-gguf-plugin package installed")
    if req.remote is not None:
        return str(req.model_dir / req.remote.weight_files[0])
    return str(formats.select_gguf(req.model_dir, req.gguf_quant).path)


def _vllm_argv(req: ServeRequest, cfg: config_mod.ModelConfig, fmt: str, plan: planner.Plan, model_path: str,
               port: int, notes: list[str]) -> list[str]:
    """The `vllm serve` argv the plan computes (before parsers and pass-through)."""
    argv = ["vllm", "serve", model_path, "--served-model-name", req.served_name, "--host", req.host,
            "--port", str(port), "--max-model-len", str(plan.max_model_len)]
    if plan.device == "cpu":
        argv += ["--kv-cache-memory-bytes", str(plan.kv_cache_bytes), "--enforce-eager"]
    else:
        argv += ["--tensor-parallel-size", str(plan.tensor_parallel_size)]
        if plan.data_parallel_size > 1:
            argv += ["--data-parallel-size", str(plan.data_parallel_size)]
        if plan.expert_parallel:
            argv.append("--enable-expert-parallel")
        if plan.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
        if plan.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(plan.max_num_seqs)]
        if plan.speculative_config:
            argv += ["--speculative-config", json.dumps(plan.speculative_config, separators=(",", ":"))]
        if plan.pipeline_parallel_size > 1:
            argv += ["--pipeline-parallel-size", str(plan.pipeline_parallel_size),
                     "--distributed-executor-backend", "ray"]
        if req.enforce_eager:
            argv.append("--enforce-eager")
    if plan.dtype:
        argv += ["--dtype", plan.dtype]
    kv_dtype = plan.kv_cache_dtype if plan.device != "cpu" else req.kv_cache_dtype
    if kv_dtype:
        argv += ["--kv-cache-dtype", kv_dtype]
    if req.quantization:
        argv += ["--quantization", req.quantization]
    if req.trust_remote_code:
        argv.append("--trust-remote-code")
    elif cfg.auto_map:
        notes.append("config.json has auto_map (custom code): vLLM may need --trust-remote-code")
    if fmt == "gguf":
        tokenizer = req.tokenizer or (None if req.remote is not None else _gguf_base_model(Path(model_path)))
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
    return argv


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
