"""Commands that look at models in the root: ls, inspect, shards, rm, template, check."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vmm.cli.app import JsonOpt, NameArg, RootOpt, app, confirm_or_refuse, refuse_without_terminal, root_of
from vmm.core.store import paths


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
    from vmm.core.store import catalog

    check = None
    if updates:
        from vmm.core.hub import updates as updates_mod

        check = updates_mod.check_updates
    listing = catalog.list_root(root_of(root), sort, check)
    for warning in listing.warnings:
        render.note(f"warning: {warning}")
    if json_out:
        render.emit_json(listing)
        return
    if not listing.models:
        render.note(f"no models in {listing.root}")
        return
    columns = ["NAME", "FORMAT", "SIZE", "SHARDS", "REVISION", "LAST USED", "USES", "MANAGED"]
    if updates:
        columns.append("UPDATE")
    render.table(None, columns, [
        [m.name, m.format, render.human_bytes(m.size_bytes),
         m.shard_count if m.sharded else "-", (m.revision or "-")[:12], render.ago(m.last_used), m.uses,
         ("yes" if m.managed else "no") + (", pinned" if m.pinned else "")] + ([_update_cell(m.update)] if updates else [])
        for m in listing.models
    ])
    totals = listing.totals
    shared = f" ({render.human_bytes(totals.shared_bytes)} shared by hardlinks)" if totals.shared_bytes else ""
    free = render.human_bytes(totals.free_bytes) if totals.free_bytes is not None else "unknown"
    render.result(f"total {render.human_bytes(totals.total_bytes)} in {totals.models} models{shared}; "
                     f"{free} free on the filesystem")


def _update_cell(row) -> str:
    if row is None:
        return "-"
    if row.error:
        return "error"
    if row.update_available:
        return f"yes ({(row.local_commit or '?')[:7]} -> {row.remote_commit[:7]})"
    return "no"


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
    from vmm.core.store import catalog, manifests

    model, quant = catalog.resolve_model(name, root_of(root))
    result = catalog.inspect_model(model, quant)
    manifests.touch_usage(model.path, "inspect")     # usage tracking (gc's LRU order, ls --sort used)
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
        *_derived_rows(result.derived, render),
    ])


def _derived_rows(derived, render) -> list[tuple[str, object]]:
    """What serving uses: the context vLLM derives, layers by kind, KV per token at it."""
    if not derived:
        return []
    kinds = ", ".join(f"{n} {k}" for k, n in derived["layers_by_kind"].items() if n)
    per_token = derived["kv_bytes_per_token"]
    return [
        ("serving context", derived["context_length"]),
        ("layer kinds", kinds + (f" (window {derived['sliding_window']})" if derived["sliding_window"] else "")),
        ("kv / token (ctx)", f"{render.human_bytes(per_token)} ({per_token:,} B)" if per_token else None),
    ]


@app.command("shards")
def shards_cmd(name: NameArg, root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Show a model's weight shards against its index: missing and unindexed files.

    Looks at pytorch_model.bin.index.json, model.safetensors.index.json, then the
    pytorch_model-*.bin and model-*.safetensors patterns, then GGUF split parts.
    Exits 5 when shards the index names are missing (the report is still printed).
    """
    from vmm import render
    from vmm.core.model import formats
    from vmm.core.store import catalog
    from vmm.core.errors import IntegrityError

    model, quant = catalog.resolve_model(name, root_of(root))
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
    from vmm.core.store import catalog

    models_root = root_of(root)
    preview = catalog.rm_preview(models_root, name)    # fails (3, 8) before asking
    refuse_without_terminal(yes, "delete", preview.name, "pass --yes")
    confirm_or_refuse(f"Delete {preview.name} ({render.human_bytes(preview.bytes_freed)}, {preview.files} files) "
                      f"from {models_root}?", yes, "delete", preview.name, "pass --yes")
    result = catalog.delete_model_from_volume(models_root, name)
    if json_out:
        render.emit_json(result)
    else:
        render.result(f"deleted {result.name}: {render.human_bytes(result.bytes_freed)} freed "
                         f"({result.bytes_freed} bytes, {result.files} files)")


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
    from vmm.core.store import catalog
    from vmm.core.model import templates

    models_root = root_of(root)
    model, quant = catalog.resolve_model(name, models_root)
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
    render.result("\n--- rendered sample (system, user, assistant, user, generation prompt) ---\n"
                  + result.rendered + ("" if result.rendered.endswith("\n") else "\n") + "--- end ---")



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
        manifest_digest: Annotated[Optional[str], typer.Option(
            "--manifest-digest", metavar="DIGEST",
            help="Also fail (exit 5) unless the manifest digest is DIGEST (`vmm check --json`'s "
                 "manifest_digest; operator manifests pass the plan's).")] = None,
        root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Check that vLLM can load the model intact: a pass / warn / fail checklist.

    Integrity (every file against the manifest's sha256 / git sha1, in parallel; --fast:
    sizes only), shards against the index, safetensors headers and GGUF files, pickled
    .bin weights, config sanity, security (configs that make transformers load code or
    write files outside the folder: CVE-2026-4372, CVE-2026-9856, auto_map into other repos),
    vLLM compatibility (architecture, quantization, GGUF, remote code) and the chat template.
    Exit 0 when nothing fails; when something fails, 5 if any integrity, format, config,
    security or template check failed, else 6 (only vLLM compatibility failed). The checklist is printed first, then one error line.
    """
    from vmm import render
    from vmm.core import check
    from vmm.core.store import catalog

    models_root = root_of(root)
    model, quant = catalog.resolve_model(name, models_root)
    report = check.check_model(model, quant, fast, vllm_version,
                               cache_dir=paths.cache_dir(models_root), expect_digest=manifest_digest)
    if json_out:
        render.emit_json(report.document())
    else:
        render.table(None, ["CHECK", "STATUS", "DETAIL"],
                     [[c.name, c.status.upper() if c.status != "pass" else "pass", c.detail] for c in report.checks])
    error = report.error()
    if error is not None:
        raise error
