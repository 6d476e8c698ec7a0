"""vmm's chat template rendering against transformers' own, on real published templates.

vLLM renders chat templates through transformers (``apply_chat_template`` ->
``transformers.utils.chat_template_utils.render_jinja_template``), so the transformers in the
vLLM venv is the oracle: for every template under tests/data/real_templates/ (verbatim, with
its source in tests/data/SOURCES.md) and each conversation below (with and without a system
message, with and without ``tools``, ``add_generation_prompt=True``), vmm's
:func:`vmm.core.model.template_render.render_messages` must give the same text, or both must refuse.

This lives in the e2e lane, not the fast one: transformers is already in the vLLM venv (the
version vLLM renders with), while adding it to the ``test`` extra would pull transformers,
tokenizers and their dependencies into every fast run for one test, at a version that need not
match vLLM's. It needs no vLLM server and runs in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
TEMPLATES = TESTS / "data" / "real_templates"
sys.path.insert(0, str(TESTS))

pytestmark = pytest.mark.e2e

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}]

_ORACLE = r"""
import json, sys
from transformers.utils.chat_template_utils import render_jinja_template
out = []
for case in json.load(sys.stdin):
    try:
        rendered, _ = render_jinja_template(conversations=[case["messages"]], tools=case["tools"],
                                            chat_template=case["template"], add_generation_prompt=True,
                                            **case["tokens"])
        out.append({"ok": rendered[0]})
    except Exception as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
print("VMM-ORACLE:" + json.dumps(out))
"""


def _vllm_python() -> str:
    from vmm.core.serving import vllm_env

    found = vllm_env.find_vllm()
    if found is None or not found.python:
        pytest.fail("no `vllm` on PATH: run this lane through scripts/test-e2e")
    return found.python


def _conversations() -> dict[str, tuple[list[dict], list | None]]:
    from vmm.core.model import template_render

    sample = template_render.sample_messages()
    return {
        "system": (sample, None),
        "no system": (sample[1:], None),
        "tools": ([{"role": "system", "content": "You are a weather bot."},
                   {"role": "user", "content": "What is the weather in Paris?"}], TOOLS),
        "tools, no system": ([{"role": "user", "content": "What is the weather in Paris?"}], TOOLS),
    }


def _vmm_render(text: str, messages, tools, tokens) -> dict:
    from vmm.core.model import template_render

    try:
        compiled = template_render.compile_template(text)
        return {"ok": template_render.render_messages(compiled, messages, tokens, add_generation_prompt=True,
                                                tools=tools)}
    except template_render.TemplateProblem as exc:
        return {"error": exc.describe()}


def test_vmm_renders_real_templates_exactly_like_transformers():
    tokens_doc = json.loads((TEMPLATES / "tokens.json").read_text())
    files = sorted(TEMPLATES.glob("*.jinja"))
    assert len(files) >= 8, files
    cases, labels = [], []
    for path in files:
        text = path.read_text(encoding="utf-8")
        tokens = {k: v for k, v in tokens_doc.get(path.name, {}).items() if v}
        for label, (messages, tools) in _conversations().items():
            cases.append({"template": text, "messages": messages, "tools": tools, "tokens": tokens})
            labels.append(f"{path.name} [{label}]")
    proc = subprocess.run([_vllm_python(), "-c", _ORACLE], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VMM-ORACLE:")), None)
    assert line, proc.stderr[-3000:]
    oracle = json.loads(line.removeprefix("VMM-ORACLE:"))
    mismatches, rendered, with_tools = [], 0, 0
    for label, case, want in zip(labels, cases, oracle):
        got = _vmm_render(case["template"], case["messages"], case["tools"], case["tokens"])
        if "ok" in want and "ok" in got:
            rendered += 1
            with_tools += bool(case["tools"]) and "get_weather" in got["ok"]
            if got["ok"] != want["ok"]:
                mismatches.append(f"{label}: vmm {got['ok'][-200:]!r} != transformers {want['ok'][-200:]!r}")
        elif ("ok" in want) != ("ok" in got):
            mismatches.append(f"{label}: vmm {got} / transformers {want}")
    assert not mismatches, "\n".join(mismatches)
    assert rendered >= len(files) * 3          # most cases render (a few templates refuse a system role)
    assert with_tools >= 8                     # the tools reached the templates that handle them
