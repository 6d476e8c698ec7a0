"""The command line: one small function per command. Parse, call one core function, render.

Errors: core raises ``VmmError`` subclasses; :func:`main` catches them once and prints one
``error:`` line with the contract's exit code. Typer's own usage errors become the same kind
of line with exit 2. ``VMM_DEBUG=1`` shows the traceback of unexpected errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vmm import __version__, _typer_fast
from vmm.core import settings
from vmm.core.errors import Interrupted, VmmError

_typer_fast.install()

app = typer.Typer(
    name="vmm",
    help="The model manager for vLLM hosts: pull, inspect, check and serve Hugging Face models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Models root (default: $VMM_ROOT, else /models).",
                 show_default=False, metavar="PATH"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
NameArg = Annotated[str, typer.Argument(help="Model: Hub id (org/name) or directory name (org--name).",
                                        metavar="NAME", show_default=False)]

_global_root: Path | None = None


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"vmm {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    root: RootOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    global _global_root
    _global_root = root


def root_of(root: Path | None) -> Path:
    """The models root: the command's --root, else the global one, else env/default."""
    return settings.models_root(root or _global_root)


# ------------------------------------------------------------------ ls / inspect / shards / rm

@app.command("ls")
def ls_cmd(root: RootOpt = None, json_out: JsonOpt = False,
           sort: Annotated[str, typer.Option("--sort", help="Order: name, size (largest first) or used (most recent first).",
                                             metavar="name|size|used")] = "name",
           updates: Annotated[bool, typer.Option("--updates", help="Ask the Hub (one call per managed model, in parallel) "
                                                 "whether a newer commit exists for its tracked revision.")] = False) -> None:
    """List the models in the root: format, size, shards, revision, last use, uses, managed.

    Reads manifests and directory entries only, never weights. An empty or missing root
    lists nothing (exit 0). Hand-made directories are listed with managed = no. The last
    line totals the root (hardlinked files counted once) and the filesystem's free bytes.
    """
    from vmm import render
    from vmm.core import info, usage
    from vmm.core.errors import UsageError

    if sort not in usage.SORTS:
        raise UsageError("unknown sort order", repr(sort), f"use one of: {', '.join(usage.SORTS)}")
    models_root = root_of(root)
    inodes: dict = {}
    listing = info.Listing(root=str(models_root), models=info.list_models(models_root, inodes))
    listing.models = usage.sort_models(listing.models, sort)
    totals = usage.totals(models_root, listing.models, inodes)
    for model in listing.models:
        if model.problem:
            render.note(f"warning: {model.name}: {model.problem}")
    checked: dict = {}
    if updates:
        from vmm.core import store, updates as updates_mod

        rows = updates_mod.check_updates(models_root, [store.load_model(Path(m.path)) for m in listing.models
                                                       if m.managed and not m.problem])
        checked = {row.name: row for row in rows}
        for row in rows:
            if row.error:
                render.note(f"warning: {row.name}: update check failed: {row.error}")
    if json_out:
        doc = {"root": listing.root, "models": listing.models, "totals": totals}
        if updates:
            doc["models"] = [{**render._plain(m), "update": checked.get(m.name)} for m in listing.models]
        render.emit_json(doc)
        return
    if not listing.models:
        render.note(f"no models in {listing.root}")
        return
    columns = ["NAME", "FORMAT", "SIZE", "SHARDS", "REVISION", "LAST USED", "USES", "MANAGED"]
    if updates:
        columns.append("UPDATE")
    render.table(None, columns, [
        [m.name, m.format, render.human_bytes(m.size_bytes),
         m.shard_count if m.sharded else "-", (m.revision or "-")[:12], _ago(m.last_used), m.uses,
         ("yes" if m.managed else "no") + (", pinned" if m.pinned else "")] + ([_update_cell(checked.get(m.name))] if updates else [])
        for m in listing.models
    ])
    shared = f" ({render.human_bytes(totals.shared_bytes)} shared by hardlinks)" if totals.shared_bytes else ""
    free = render.human_bytes(totals.free_bytes) if totals.free_bytes is not None else "unknown"
    sys.stdout.write(f"total {render.human_bytes(totals.total_bytes)} in {totals.models} models{shared}; "
                     f"{free} free on the filesystem\n")


def _update_cell(row) -> str:
    if row is None:
        return "-"
    if row.error:
        return "error"
    if row.update_available:
        return f"yes ({(row.local_commit or '?')[:7]} -> {row.remote_commit[:7]})"
    return "no"


def _ago(iso: str | None) -> str:
    from datetime import datetime, timezone

    from vmm import render

    if iso is None:
        return "never"
    then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return render.human_age((datetime.now(timezone.utc) - then).total_seconds())


@app.command("inspect")
def inspect_cmd(name: Annotated[str, typer.Argument(
        help="Model: Hub id (org/name[:QUANT]), directory name (org--name) or a directory path.",
        metavar="NAME", show_default=False)],
        root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Show a model's format, config, parameters, weight bytes and KV-cache bytes per token.

    Parameters and bytes come from the weights' own headers (safetensors header, GGUF tensor
    infos, index total_size); a GGUF directory with several quantizations needs NAME:QUANT.
    """
    from vmm import render
    from vmm.core import info, store

    model, quant = info.resolve_model(name, root_of(root))
    result = info.inspect_model(model, quant)
    store.touch_usage(model.path, "inspect")     # usage tracking (gc's LRU order, ls --sort used)
    for problem in result.problems:
        render.note(f"warning: {problem}")
    if json_out:
        render.emit_json(result)
        return
    cfg = result.config
    rope = cfg["rope_scaling"]
    render.key_values([
        ("name", result.name), ("path", result.path),
        ("format", result.format + (f" ({result.quant}: {result.gguf_file})" if result.gguf_file else "")),
        ("managed", "yes" if result.managed else "no"), ("revision", result.revision),
        ("architecture", ", ".join(cfg["architectures"]) or None), ("model type", cfg["model_type"]),
        ("parameters", f"{render.human_count(result.parameters)} ({result.parameters:,})" if result.parameters else None),
        ("weight bytes", f"{render.human_bytes(result.weight_bytes)} ({result.weight_bytes:,}; {result.weight_source})"
         if result.weight_bytes is not None else None),
        ("dtype", cfg["torch_dtype"]), ("context", cfg["max_position_embeddings"]),
        ("model_max_length", cfg["model_max_length"]), ("vocab", cfg["vocab_size"]),
        ("hidden size", cfg["hidden_size"]), ("layers", cfg["num_hidden_layers"]),
        ("heads / kv heads", f"{cfg['num_attention_heads']} / {cfg['num_key_value_heads']}"
         if cfg["num_attention_heads"] else None),
        ("head dim", cfg["head_dim"] or (f"{cfg['hidden_size'] // cfg['num_attention_heads']} (hidden / heads)"
                                          if cfg["hidden_size"] and cfg["num_attention_heads"] else None)),
        ("rope scaling", ", ".join(f"{k}={v}" for k, v in rope.items()) if rope else None),
        ("sliding window", cfg["sliding_window"]),
        ("quantization", (cfg["quantization"] or {}).get("quant_method") if cfg["quantization"] else None),
        ("kv cache / token", f"{render.human_bytes(result.kv_cache_bytes_per_token)} ({result.kv_cache_bytes_per_token:,} B)"
         if result.kv_cache_bytes_per_token else None),
        ("shards", result.shard_count or None),
    ])


@app.command("shards")
def shards_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Show a model's weight shards against its index: missing and unindexed files.

    Looks at pytorch_model.bin.index.json, model.safetensors.index.json, then the
    pytorch_model-*.bin and model-*.safetensors patterns, then GGUF split parts.
    Exits 5 when shards the index names are missing (the report is still printed).
    """
    from vmm import render
    from vmm.core import formats, info
    from vmm.core.errors import IntegrityError

    model, quant = info.resolve_model(name, root_of(root))
    report = formats.shard_report(model.path, quant)
    if json_out:
        render.emit_json(report)
    else:
        render.key_values([
            ("sharded", "yes" if report.sharded else "no"), ("shard count", report.shard_count),
            ("index", report.index or "none"),
        ])
        if report.shard_files:
            missing = set(report.missing)
            render.table(None, ["SHARD", "STATUS"], [
                [f, "MISSING" if f in missing else "ok"] for f in report.shard_files])
        for f in report.unindexed:
            render.note(f"warning: {f} is not named by {report.index}")
    if report.missing:
        raise IntegrityError(f"{len(report.missing)} shard(s) named by the index are missing",
                             f"{model.name}: {', '.join(report.missing)}",
                             f"run `vmm pull {model.name}` to fetch them" if model.managed
                             else "restore them, or delete the index if the model is not sharded")


@app.command("rm")
def rm_cmd(name: NameArg, root: RootOpt = None,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking (required when stdin is not a terminal).")] = False,
           json_out: JsonOpt = False) -> None:
    """Delete a model from the root and print the bytes freed.

    Asks first on a terminal; with stdin not a terminal it refuses (exit 2) unless --yes.
    Refuses with exit 8 while another vmm process (pull, serve) holds the model's lock.
    """
    from vmm import render
    from vmm.core import info, store
    from vmm.core.errors import UsageError

    models_root = root_of(root)
    ref = info.rm_target(name)
    model = store.locate_model(ref.repo_id, models_root)
    if store.is_locked(models_root, ref.dir_name):
        # Fail before asking; delete_model_from_volume checks again under the lock.
        from vmm.core.errors import BusyError

        raise BusyError("model is locked by another vmm process", model.name,
                        "wait for the pull or serve using it to finish, or stop it")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to delete without confirmation", model.name,
                             "stdin is not a terminal: pass --yes")
        size, count = info.model_size(model)
        if not typer.confirm(f"Delete {model.name} ({render.human_bytes(size)}, {count} files) from {models_root}?",
                             default=False, err=True):
            raise UsageError("deletion not confirmed", model.name, "nothing was deleted")
    result = info.delete_model_from_volume(models_root, ref.repo_id)
    if json_out:
        render.emit_json(result)
    else:
        sys.stdout.write(f"deleted {result.name}: {render.human_bytes(result.bytes_freed)} freed "
                         f"({result.bytes_freed} bytes, {result.files} files)\n")



# ------------------------------------------------------------------ pull

@app.command()
def pull(
    name: NameArg,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit sha (same as NAME@REV).",
                                                    metavar="REV", show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="Only files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Skip files matching this glob (repeatable).",
                                                         metavar="GLOB", show_default=False)] = None,
    all_files: Annotated[bool, typer.Option("--all-files", help="Also fetch duplicate weight formats "
                                            "(pytorch_model*.bin, consolidated*, original/) and every GGUF.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="No network: succeed only if the model is complete "
                                          "(also HF_HUB_OFFLINE=1).")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Exit 8 instead of waiting when another vmm holds the model.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Parallel connections.", metavar="N")] = 8,
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Bytes per Range request (e.g. 16MiB).",
                                            metavar="SIZE")] = "16MiB",
    root: RootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a model from the Hub into the models root: parallel, resumable, verified."""
    import signal

    from vmm import render
    from vmm.core import download
    from vmm.core.units import parse_size
    from vmm.render_pull import PullProgress

    size = parse_size(chunk_size, "--chunk-size")

    def _term(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread (embedding)
        previous = None
    try:
        with PullProgress(name) as progress:
            result = download.download_model_to_path(
                name, root=root_of(root), include=include, exclude=exclude, revision=revision,
                all_files=all_files, offline=True if offline else None, wait=not no_wait,
                workers=workers, chunk_size=size, progress=progress)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if json_out:
        render.emit_json({"name": result.name, "path": result.path, "revision": result.revision,
                          "files": result.files, "bytes_downloaded": result.bytes_downloaded,
                          "bytes_total": result.bytes_total, "verified": result.verified,
                          "kept_files": result.kept_files, "quant": result.quant,
                          "previous_revision": result.previous_revision,
                          "reused_files": result.reused_files,
                          "chat_template": result.chat_template,
                          "chat_template_written": result.chat_template_written})
        return
    what = "up to date" if not result.bytes_downloaded and not result.fetched_files else "pulled"
    render.key_values([("model", result.name), ("status", what), ("path", result.path),
                       ("revision", result.revision), ("files", result.files),
                       ("size", render.human_bytes(result.bytes_total)),
                       ("downloaded", render.human_bytes(result.bytes_downloaded)),
                       ("verified", "yes" if result.verified else "no"),
                       ("chat template", (result.chat_template or "-")
                        + (" (written by vmm: the repo has none)" if result.chat_template_written else ""))])



# ------------------------------------------------------------------ template / check

@app.command("template")
def template_cmd(
        name: Annotated[str, typer.Argument(
            help="Model: Hub id (org/name[:QUANT]), directory name (org--name) or a directory path.",
            metavar="NAME", show_default=False)],
        system: Annotated[Optional[str], typer.Option(
            "--system", metavar="TEXT",
            help="System message of the sample conversation (e.g. a role-play character card).")] = None,
        set_value: Annotated[Optional[str], typer.Option(
            "--set", metavar="FAMILY|FILE",
            help="Write chat_template.jinja for vLLM: a family (chatml, mistral, dialogpt, generic) "
                 "or a .jinja file. An original chat_template.jinja is kept in .vmm/.")] = None,
        root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Show the chat template vLLM will use, where it comes from, and a rendered sample.

    Looks at chat_template.jinja, then tokenizer_config.json, then GGUF metadata, then the
    family default (chatml for Qwen/Yi, mistral, dialogpt, generic). The sample is a system
    message (character card), user, assistant, user and the generation prompt; a template
    that refuses a system role gets it folded into the first user turn. A template with a
    syntax error or that raises on the plain conversation exits 5.
    """
    from vmm import render
    from vmm.core import info, templates

    models_root = root_of(root)
    model, quant = info.resolve_model(name, models_root)
    result = templates.template_command(model, models_root, quant, system, set_value)
    for note in result.notes:
        render.note(f"note: {note}")
    if result.action:
        render.note(result.action)
    if result.system_folded:
        render.note(f"note: system message folded into the first user turn: {result.fold_reason}")
    if json_out:
        render.emit_json(result)
        return
    render.key_values([
        ("name", result.name),
        ("source", result.source + (f" ({result.source_path})" if result.source_path
                                    and result.source_path != result.source else "")
         + (" (written by vmm)" if result.written_by_vmm else "")),
        ("family", result.family),
        ("bos / eos", f"{result.bos_token or '-'} / {result.eos_token or '-'}"),
        ("system", "folded into the first user turn" if result.system_folded else "kept as a system turn"),
        ("other templates", ", ".join(result.named_templates) or None),
    ])
    sys.stdout.write("\n--- rendered sample (system, user, assistant, user, generation prompt) ---\n")
    sys.stdout.write(result.rendered + ("" if result.rendered.endswith("\n") else "\n"))
    sys.stdout.write("--- end ---\n")



@app.command("check")
def check_cmd(
        name: Annotated[str, typer.Argument(
            help="Model: Hub id (org/name[:QUANT]), directory name (org--name) or a directory path.",
            metavar="NAME", show_default=False)],
        fast: Annotated[bool, typer.Option("--fast", help="Integrity by file sizes only (no hashing).")] = False,
        vllm_version: Annotated[Optional[str], typer.Option(
            "--vllm-version", metavar="V",
            help="Judge against this vLLM version (default: the installed vLLM, else the newest "
                 "bundled registry snapshot).")] = None,
        root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Check that vLLM can load the model intact: a pass / warn / fail checklist.

    Integrity (every file against the manifest's sha256 / git sha1, in parallel; --fast:
    sizes only), shards against the index, safetensors headers and GGUF files, pickled
    .bin weights, config sanity, vLLM compatibility (architecture, quantization, GGUF,
    remote code) and the chat template. Exit 0 when nothing fails; when something fails,
    5 if any integrity, format, config or template check failed, else 6 (only vLLM
    compatibility failed). The checklist is printed first, then one error line.
    """
    from vmm import render
    from vmm.core import check, info

    models_root = root_of(root)
    model, quant = info.resolve_model(name, models_root)
    report = check.check_model(model, quant, fast, vllm_version,
                               cache_dir=settings.state_dir(models_root) / "cache")
    if json_out:
        render.emit_json(report.contract() | {"name": report.name, "path": report.path,
                                               "vllm_version": report.vllm_version,
                                               "exit_code": report.exit_code})
    else:
        render.table(None, ["CHECK", "STATUS", "DETAIL"],
                     [[c.name, c.status.upper() if c.status != "pass" else "pass", c.detail] for c in report.checks])
    error = report.error()
    if error is not None:
        raise error


# ------------------------------------------------------------------ serve


@app.command("serve", context_settings={"allow_extra_args": True})
def serve_cmd(
    ctx: typer.Context,
    name: NameArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and the plan; start nothing.")] = False,
    json_out: JsonOpt = False,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="Plan for N GPUs per node instead of the local ones (with --gpu-memory).")] = None,
    gpu_memory: Annotated[Optional[str], typer.Option("--gpu-memory", help="Memory per GPU to plan for, e.g. 24GiB or 80GB (with --gpus); on CPU: host memory for vLLM.", metavar="SIZE")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Nodes: tensor parallel within a node, pipeline parallel across (Ray).")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto (GPU if found, CPU for a CPU build of vLLM), cuda or cpu.")] = "auto",
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", min=16, help="Context length to serve (default: the model's, capped by memory).")] = None,
    min_context: Annotated[Optional[int], typer.Option("--min-context", min=1, help="Fail (exit 6) rather than serve a shorter context than this.")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option("--gpu-memory-utilization", min=0.05, max=1.0, help="Fraction of each GPU's total memory vLLM may use (default: vLLM's, 0.92 since 0.20).")] = None,
    kv_cache_dtype: Annotated[Optional[str], typer.Option("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 (halves the KV bytes per token).")] = None,
    tensor_parallel_size: Annotated[Optional[int], typer.Option("--tensor-parallel-size", "-tp", min=1, help="Force a tensor-parallel size (checked for validity).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address vLLM listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port vLLM listens on.")] = 8000,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer repo or path (GGUF: the base model's).")] = None,
    quantization: Annotated[Optional[str], typer.Option("--quantization", help="Must agree with the checkpoint's own quantization_config.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Let vLLM run the model's custom code.")] = False,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs (less memory, slower decode).")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Return once vLLM is ready; logs go to `vmm logs NAME`.")] = False,
    emit: Annotated[Optional[str], typer.Option("--emit", help="Print a `docker run` or a systemd unit for the same plan instead of starting.", metavar="docker|systemd")] = None,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", min=1.0, help="Seconds to wait for vLLM to answer a first request.")] = 900.0,
    root: RootOpt = None,
) -> None:
    """Serve a model with vLLM, with parameters computed for the GPUs at hand.

    Arguments after `--` go to `vllm serve` unchanged and override the computed ones.
    Exit 6 when the model does not fit or vLLM cannot serve it; 127 without vllm; once vLLM
    has started, vLLM's own exit code.
    """
    from vmm import render
    from vmm.core import info, launcher, planner, runtime, vllm_env

    if device not in ("auto", "cuda", "cpu"):
        from vmm.core.errors import UsageError

        raise UsageError("unknown --device", device, "use auto, cuda or cpu")
    if emit not in (None, "docker", "systemd"):
        from vmm.core.errors import UsageError

        raise UsageError("unknown --emit", emit, "use docker or systemd")
    base = root_of(root)
    model, quant = info.resolve_model(name, base)
    install = vllm_env.find_vllm()
    req = launcher.ServeRequest(
        name=model.name, model_dir=model.path, served_name=model.name, host=host, port=port, device=device,
        gpus=gpus, gpu_memory=gpu_memory, nodes=nodes, quant=quant, tokenizer=tokenizer,
        quantization=quantization, trust_remote_code=trust_remote_code,
        options=planner.PlanOptions(max_model_len, min_context, gpu_memory_utilization, tensor_parallel_size,
                                    kv_cache_dtype, enforce_eager),
        passthrough=list(ctx.args))
    cmd = launcher.build(req, install)
    if emit == "docker":
        sys.stdout.write(runtime.emit_docker(cmd.argv, base, model.path, install.version if install else None,
                                             env=cmd.env))
        return
    if emit == "systemd":
        sys.stdout.write(runtime.emit_systemd(cmd.argv, model.name, base, install.executable if install else None,
                                              env=cmd.env))
        return
    if dry_run:
        if json_out:
            render.emit_json(cmd.document())
        else:
            render.serve_plan(cmd)
        return
    code = launcher.run(cmd, req, base, detach=detach, ready_timeout_s=ready_timeout,
                        on_wait=render.note, on_ready=lambda url: (sys.stdout.write(url + "\n"), sys.stdout.flush()))
    if code:
        raise typer.Exit(code)



# ------------------------------------------------------------------ storage: dedup / gc / pin / import

def _confirm_or_refuse(yes: bool, dry_run: bool, what: str, question: str) -> None:
    """rm's rule: a terminal asks, anything else needs --yes (or --dry-run)."""
    from vmm.core.errors import UsageError

    if yes or dry_run:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without confirmation", "stdin is not a terminal",
                         "pass --yes, or --dry-run to see what would happen")
    if not typer.confirm(question, default=False, err=True):
        raise UsageError(f"{what} not confirmed", "", "nothing was changed")


@app.command("dedup")
def dedup_cmd(root: RootOpt = None, json_out: JsonOpt = False,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be linked; change nothing.")] = False) -> None:
    """Store identical files once: hardlink copies across the models of the root.

    Content is matched by sha256 (from manifests; hand-made directories are hashed when
    another file has the same size) and the kept copy is re-hashed first. Each file is
    replaced atomically; locked models (pulling, serving) and files on another filesystem
    are skipped and listed. Deleting one model later never damages another.
    """
    from vmm import render
    from vmm.core import dedup

    report = dedup.dedup(root_of(root), dry_run=dry_run)
    for skip in report.skipped:
        render.note(f"skipped {skip.name}: {skip.reason}")
    if json_out:
        render.emit_json(report)
        return
    if report.groups:
        render.table(None, ["SHA256", "SIZE", "COPIES", "LINKED", "SAVED", "FILES"], [
            [g.sha256[:12], render.human_bytes(g.size_bytes), len(g.files), g.linked,
             render.human_bytes(g.bytes_saved), ", ".join(g.files)] for g in report.groups])
    verb = "would save" if dry_run else "saved"
    sys.stdout.write(f"{verb} {render.human_bytes(report.bytes_saved)} ({report.bytes_saved} bytes) by "
                     f"linking {report.linked} files\n")


@app.command("gc")
def gc_cmd(root: RootOpt = None, json_out: JsonOpt = False,
           keep_under: Annotated[Optional[str], typer.Option("--keep-under", metavar="SIZE",
               help="Remove least recently used models until the root's model bytes fit (e.g. 500GB, 1.5TiB).",
               show_default=False)] = None,
           unused_for: Annotated[Optional[str], typer.Option("--unused-for", metavar="DURATION",
               help="Remove models not used for this long (e.g. 30d, 12h, 2w).", show_default=False)] = None,
           partials_older_than: Annotated[str, typer.Option("--partials-older-than", metavar="DURATION",
               help="Remove partial downloads untouched for this long.")] = "24h",
           dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking (required when stdin is not a terminal).")] = False) -> None:
    """Remove least recently used models and stale partial downloads.

    Last use is the manifest's last-used time (pull, serve, inspect), else the pull time,
    else the directory's mtime. Pinned (`vmm pin`) and locked (pulling, serving) models are
    never removed. Files hardlinked into other models (`vmm dedup`) free nothing until their
    last name goes; the report counts only bytes really freed. Without --yes on a terminal
    it asks; without a terminal it refuses (exit 2) unless --yes or --dry-run.
    """
    from vmm import render
    from vmm.core import gc

    keep = gc.parse_size(keep_under) if keep_under is not None else None
    unused = gc.parse_duration(unused_for) if unused_for is not None else None
    partials = gc.parse_duration(partials_older_than)
    models_root = root_of(root)
    if not dry_run and not yes:
        if not sys.stdin.isatty():
            _confirm_or_refuse(yes, dry_run, "remove models", "")
        plan = gc.gc(models_root, keep, unused, partials, dry_run=True)
        if not plan.removed and not plan.partials:
            _print_gc(plan, json_out)
            return
        _confirm_or_refuse(yes, dry_run, "remove models",
                           f"Remove {len(plan.removed)} model(s) and {len(plan.partials)} partial file(s) "
                           f"from {models_root}: {', '.join(m.name for m in plan.removed) or '-'}?")
    report = gc.gc(models_root, keep, unused, partials, dry_run=dry_run)
    _print_gc(report, json_out)


def _print_gc(report, json_out: bool) -> None:
    from vmm import render

    for skip in report.skipped:
        render.note(f"kept {skip.name}: {skip.reason}")
    if not report.fits:
        render.note(f"warning: the root still holds {render.human_bytes(report.root_bytes_after)}, over "
                    f"--keep-under {render.human_bytes(report.keep_under_bytes)}: the rest is pinned or locked")
    if json_out:
        render.emit_json(report)
        return
    verb = "would remove" if report.dry_run else "removed"
    for m in report.removed:
        shared = "" if m.bytes_freed >= m.size_bytes else f", {render.human_bytes(m.bytes_freed)} freed (rest shared)"
        sys.stdout.write(f"{verb} {m.name} ({render.human_bytes(m.size_bytes)}{shared}; {m.reason}; "
                         f"last used {render.human_age(_age(m.last_used))} by {m.last_used_source})\n")
    for p in report.partials:
        sys.stdout.write(f"{verb} partial {p.path} ({render.human_bytes(p.size_bytes)}, "
                         f"{render.human_age(p.age_s)})\n")
    sys.stdout.write(f"{'would free' if report.dry_run else 'freed'} {render.human_bytes(report.bytes_freed)} "
                     f"({report.bytes_freed} bytes); root {render.human_bytes(report.root_bytes_before)} -> "
                     f"{render.human_bytes(report.root_bytes_after)}\n")


def _age(epoch: float | None) -> float | None:
    import time

    return None if epoch is None else time.time() - epoch


@app.command("pin")
def pin_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Keep a model out of `vmm gc`, whatever its age or size (hand-made directories too)."""
    from vmm import render
    from vmm.core import gc

    result = gc.pin(root_of(root), name)
    render.emit_json(result) if json_out else sys.stdout.write(f"pinned {result.name}\n")


@app.command("unpin")
def unpin_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Let `vmm gc` remove a model again."""
    from vmm import render
    from vmm.core import gc

    result = gc.unpin(root_of(root), name)
    render.emit_json(result) if json_out else sys.stdout.write(f"unpinned {result.name}\n")


@app.command("import")
def import_cmd(source: Annotated[str, typer.Argument(
                   help="A model directory, an HF cache entry (models--org--name or its snapshots/<sha>), "
                        "or org/name[@REVISION] looked up in HF_HUB_CACHE.", metavar="PATH_OR_CACHE_ENTRY",
                   show_default=False)],
               root: RootOpt = None, json_out: JsonOpt = False,
               name: Annotated[Optional[str], typer.Option("--name", metavar="ORG/NAME",
                   help="Name in the root (default: from the cache entry or the directory name).",
                   show_default=False)] = None,
               move: Annotated[bool, typer.Option("--move", help="Remove the source once adopted (a directory on "
                                                  "the same filesystem is renamed; a cache entry is deleted "
                                                  "whole, every revision).")] = False,
               force: Annotated[bool, typer.Option("--force", help="Replace a model of the same name.")] = False) -> None:
    """Adopt an existing model directory or Hugging Face cache entry into the root.

    Every file is hashed (cache blobs must match their sha256 / git sha1 names) and
    hardlinked into <root>/org--name (copied across filesystems), with a manifest, so the
    model is managed like a pulled one. Nothing is downloaded. A name already in the root
    exits 2 unless --force.
    """
    from vmm import render
    from vmm.core import adopt

    result = adopt.import_model(root_of(root), source, name=name, move=move, force=force)
    if json_out:
        render.emit_json(result)
        return
    how = f"{result.linked} linked, {result.copied} copied" if (result.linked or result.copied) else \
        ("moved" if result.moved else "adopted in place")
    sys.stdout.write(f"imported {result.name} from {result.source} ({result.kind}): {result.files} files, "
                     f"{render.human_bytes(result.bytes_total)}, {how}, verified\n")



# ------------------------------------------------------------------ runtime: ps / stop / logs


@app.command("ps")
def ps_cmd(
    root: RootOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.0, max=60.0,
                                            help="Seconds between the two /metrics samples that give tokens/s (0: no rates).")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """List the vLLM servers vmm started on this host, with live figures from /metrics."""
    from vmm import render
    from vmm.core import runtime

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
    from vmm.core import runtime

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
    import time

    from vmm.core import runtime

    path = runtime.log_path_for(root_of(root), target)
    try:
        for line in runtime.tail_lines(path, lines):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if not follow:
            return
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            while True:
                chunk = handle.readline()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except FileNotFoundError:
        from vmm.core.errors import NotFoundError

        raise NotFoundError("log file is gone", str(path), "the server's state dir was cleaned") from None



# ------------------------------------------------------------------ entry point

def _usage_line(exc: Exception) -> str:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "vmm"
    message = " ".join(message.split())
    return f"error: bad usage: {message} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, map every failure to one line and a code."""
    from typer.exceptions import TyperException

    global _global_root
    _global_root = None
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = app(args=args, prog_name="vmm", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == Interrupted.exit_code:
            # typer 0.29 (core.py _main) turns KeyboardInterrupt into Exit(130), which
            # click returns silently when not in standalone mode.
            sys.stderr.write(Interrupted("interrupted", "", "run the same command again to resume").line() + "\n")
    except VmmError as exc:
        if settings.debug():
            import traceback

            traceback.print_exc()
        sys.stderr.write(exc.line() + "\n")
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write(Interrupted("interrupted", "", "run the same command again to resume").line() + "\n")
        code = Interrupted.exit_code
    except TyperException as exc:
        sys.stderr.write(_usage_line(exc) + "\n")
        code = getattr(exc, "exit_code", 2) or 2
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 1
        if settings.debug():
            raise
        sys.stderr.write(
            f"error: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(this is a bug in vmm; rerun with VMM_DEBUG=1 and report the traceback)\n"
        )
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    sys.exit(code)
