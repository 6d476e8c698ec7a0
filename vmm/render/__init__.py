"""Rendering: tables and text to stdout, progress and messages to stderr, JSON documents.

The core returns dataclasses; this module turns them into what the operator sees. Every
JSON document passes through :func:`emit_json`, which sets ``schema_version`` and ``vmm_version`` in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from vmm import __version__
from vmm.core.units import human_bytes  # noqa: F401 (render.human_bytes: one copy, in units)
from typing import Any

SCHEMA_VERSION = 1

_stderr = None


def err():
    """rich Console on stderr (the pull progress bar)."""
    global _stderr
    if _stderr is None:
        from rich.console import Console

        _stderr = Console(stderr=True, soft_wrap=True)
    return _stderr


def reset_consoles() -> None:
    """Forget the cached console (tests swap sys.stderr between runs)."""
    global _stderr
    _stderr = None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Field by field, not dataclasses.asdict: asdict deep-copies every value, which
        # made `vmm ls --json` of 500 models spend 90 ms here.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout with ``schema_version`` and ``vmm_version`` first
    (which vmm produced it: a document kept in CI logs says what wrote it)."""
    doc = {"schema_version": SCHEMA_VERSION, "vmm_version": __version__, **_plain(document)}
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A line for the operator on stderr (never on stdout: stdout is for results); also the
    one ``error: what: which (what to do)`` line of a failure."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def result(text: str) -> None:
    """Result text on stdout (a line, or a whole document such as a manifest or a unit file),
    flushed at once: scripts read it while vmm runs (``serve`` prints its URL when ready)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def human_count(n: int | None) -> str:
    """7615616512 -> '7.62B'."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def ago(when: float | str | None) -> str:
    """'3d ago' / 'never' for an epoch time or a manifest's ISO stamp (:func:`units.age_s`)."""
    from vmm.core.units import age_s

    return human_age(age_s(when))


def human_age(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "never"
    seconds = max(0.0, seconds)
    for div, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= div:
            return f"{int(seconds // div)}{suffix} ago"
    return f"{int(seconds)}s ago"


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table on stdout: one line per row, columns two spaces apart.

    Plain text rather than a rich Table: rich measured 0.35 s for 500 rows (`vmm ls`),
    and a row that never wraps is what grep and awk want. ``None`` shows as ``-``.
    """
    n = len(columns)
    cells = [[str(c) for c in columns]] + [
        (["-" if v is None else str(v) for v in row] + [""] * n)[:n] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [title] if title else []
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    result("\n".join(lines))


def key_values(pairs: list[tuple[str, Any]]) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    if pairs:
        result("\n".join(f"{key.ljust(width)}  {'-' if value is None else value}" for key, value in pairs))


def servers_table(statuses) -> None:
    rows = []
    for s in statuses:
        def num(v, fmt="{:.0f}"):
            return "-" if v is None else fmt.format(v)
        gpus = ",".join(map(str, s.gpu_ids)) if getattr(s, "gpu_ids", None) else "-"
        layout = getattr(s, "layout", None)
        if layout and gpus != "-" and (layout["data_parallel_size"] > 1 or layout["tensor_parallel_size"] > 1):
            gpus += f" (TP {layout['tensor_parallel_size']}" + (
                f" x DP {layout['data_parallel_size']}" if layout["data_parallel_size"] > 1 else "") + (
                " + EP" if layout["expert_parallel"] else "") + ")"
        gpu_mem = human_bytes(s.gpu_bytes) + (" each" if len(s.gpu_ids or []) > 1 else "") \
            if getattr(s, "gpu_bytes", None) else "-"
        rows.append([
            s.model, s.pid, s.url, "up" if s.alive else "dead (cleaned)", gpus, gpu_mem,
            ago(s.started_at).replace(" ago", "") if s.alive else "-",
            num(s.running), num(s.waiting),
            "-" if s.kv_cache_usage is None else f"{s.kv_cache_usage * 100:.0f}%",
            num(s.generation_tokens_per_s, "{:.1f}"), num(s.prompt_tokens_per_s, "{:.1f}"),
            s.metrics_error or "",
        ])
    if not rows:
        note("no servers started by vmm on this host")
        return
    table(None, ["model", "pid", "url", "state", "gpus", "gpu mem", "up", "running", "waiting", "kv cache",
                 "gen tok/s", "prompt tok/s", "note"], rows)


def _parser_rows(choice) -> list[tuple[str, object]]:
    if choice is None:
        return []
    return [("tool calls", f"{choice.tool_call_parser or 'off'}: {choice.tool_why}"),
            ("reasoning", f"{choice.reasoning_parser or 'off'}: {choice.reasoning_why}"),
            ("parsers of", f"vLLM {choice.vllm_version} ({choice.registry_source})")]


def serve_plan(cmd) -> None:
    """The dry-run: the command, then the reasoning."""
    import shlex

    p = cmd.plan
    result(shlex.join(cmd.argv) + "\n\n")
    gpu_line = (f"{p.gpu_count} x {human_bytes(p.gpu_memory_bytes)}" if p.device != "cpu"
                else f"CPU, {human_bytes(p.gpu_memory_bytes)} of host memory usable")
    key_values([
        ("hardware", gpu_line),
        ("weights", human_bytes(p.weight_bytes)),
        ("tensor parallel", p.tensor_parallel_size),
        ("pipeline parallel", p.pipeline_parallel_size),
        ("data parallel", p.data_parallel_size if p.device != "cpu" else None),
        ("expert parallel", ("yes" if p.expert_parallel else "no") if p.device != "cpu" else None),
        ("speculative", json.dumps(p.speculative_config) if p.speculative_config else None),
        ("memory utilization", p.gpu_memory_utilization if p.gpu_memory_utilization is not None or p.device == "cpu"
         else "vLLM's (1.0 of free memory after CUDA graphs, extensible KV cache)"),
        ("KV cache dtype", p.kv_cache_dtype),
        ("max concurrency", f"{p.max_concurrency:g} sequences of {p.max_model_len} tokens"
         if p.max_concurrency is not None else None),
        ("max num seqs", p.max_num_seqs),
        ("runtime margin", human_bytes(p.overhead_bytes) + (" per GPU" if p.device != "cpu" else "")),
        ("KV cache", f"{human_bytes(p.kv_cache_bytes)}{' per GPU' if p.device != 'cpu' else ''}, "
                     f"{p.kv_cache_tokens} tokens at {p.kv_cache_bytes_per_token} B/token"
                     + (" if every layer held them all" if p.kv_accounting == "hybrid" else "")),
        ("KV per sequence", f"{human_bytes(p.kv_bytes_per_sequence)} at {p.max_model_len} tokens ({p.kv_accounting})"
         if p.kv_bytes_per_sequence else None),
        ("max model len", f"{p.max_model_len} (model: {p.model_max_len}"
                          + (f"; full-attention accounting: {p.full_attention_max_model_len}"
                             if p.kv_accounting == "hybrid" else "") + ")"),
        ("dtype", p.dtype or "auto"),
        *_parser_rows(getattr(cmd, "parsers", None)),
    ] + ([("GPUs chosen", f"{','.join(map(str, cmd.gpu_ids))} (CUDA_VISIBLE_DEVICES), "
                          f"{human_bytes(cmd.gpu_bytes)} for vLLM on each")] if cmd.gpu_ids else [])
      + ([("port", cmd.port)] if getattr(cmd, "port", None) else [])
      + ([("source", f"Hub {cmd.hub['repo']}@{cmd.hub['commit'][:12]} ({cmd.hub['endpoint']}), "
                     f"{human_bytes(cmd.hub['bytes_read'])} read of {human_bytes(cmd.hub['repo_bytes'])} "
                     f"in {cmd.hub['requests']} requests")] if getattr(cmd, "hub", None) else []))
    if getattr(cmd, "gpus", None):
        result("")
        table(None, ["gpu", "name", "total", "free", "vmm servers", "chosen"],
              [[g["index"], g["name"], human_bytes(g["total_bytes"]), human_bytes(g["free_bytes"]),
                "; ".join(g["vmm_servers"]) or "-", "yes" if g["index"] in (cmd.gpu_ids or []) else ""]
               for g in cmd.gpus])
    tail = [f"note: {line}" for line in cmd.notes] + [f"ray: {line}" for line in cmd.ray_commands]
    if getattr(cmd, "identical", None) is not None:
        tail += [f"same on every node: {line}" for line in cmd.identical.lines()]
    if tail:
        result("\n".join(tail))
