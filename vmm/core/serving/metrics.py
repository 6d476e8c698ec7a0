"""Live figures of a running vLLM: its Prometheus /metrics, parsed and picked."""

from __future__ import annotations

import re
import urllib.request

# vLLM's Prometheus names (vllm/v1/metrics/loggers.py, 0.10-0.33). The KV-cache gauge was
# vllm:gpu_cache_usage_perc in the V0 engine and is vllm:kv_cache_usage_perc in V1.
METRIC_KEYS = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric name over its label sets (engines, models)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        totals[match.group(1)] = totals.get(match.group(1), 0.0) + value
    return totals


def pick_metrics(samples: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, names in METRIC_KEYS.items():
        out[key] = next((samples[n] for n in names if n in samples), None)
    return out


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float | None]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as response:
        text = response.read(8 << 20).decode("utf-8", "replace")
    return pick_metrics(parse_prometheus(text))
