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
def ls_cmd(root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """List the models in the root: format, size, shards, revision, last use, managed.

    Reads manifests and directory entries only, never weights. An empty or missing root
    lists nothing (exit 0). Hand-made directories are listed with managed = no.
    """
    from vmm import render
    from vmm.core import info

    listing = info.list_models(root_of(root))
    for model in listing.models:
        if model.problem:
            render.note(f"warning: {model.name}: {model.problem}")
    if json_out:
        render.emit_json({"root": listing.root, "models": listing.models})
        return
    if not listing.models:
        render.note(f"no models in {listing.root}")
        return
    render.table(None, ["NAME", "FORMAT", "SIZE", "SHARDS", "REVISION", "LAST USED", "MANAGED"], [
        [m.name, m.format, render.human_bytes(m.size_bytes), m.shard_count if m.sharded else "-",
         (m.revision or "-")[:12], _ago(m.last_used), "yes" if m.managed else "no"]
        for m in listing.models
    ])


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
    from vmm.core import info

    model, quant = info.resolve_model(name, root_of(root))
    result = info.inspect_model(model, quant)
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
    from vmm.core import info, names, store
    from vmm.core.errors import UsageError

    models_root = root_of(root)
    ref = names.parse_model_name(name)
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


# ------------------------------------------------------------------ template / check


# ------------------------------------------------------------------ serve


# ------------------------------------------------------------------ storage: dedup / gc / pin / import


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
