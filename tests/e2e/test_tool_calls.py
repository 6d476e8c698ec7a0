"""Real vLLM (CPU build): `vmm serve` switches tool calling on, with vLLM's own parser.

The tiny model carries a real published template that handles `tools` (Qwen/Qwen3-0.6B's,
Hermes-style). vmm must pick `--enable-auto-tool-choice --tool-call-parser hermes` from it;
then a chat completion that carries `tools` with `tool_choice: "auto"` answers 200, and the
same request to a server started without the parser flags (`--tool-parser none`) answers
400 with vLLM's own complaint: the test bites. The model's output is noise, so the test
asserts status codes and the response's shape, never a parsed tool call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))

import tinymodel  # noqa: E402
from .lane import free_port, reaped, serve_arg_errors, start_serve, vllm_python, vmm  # noqa: E402

pytestmark = pytest.mark.e2e
REPO_ID = "vmm-test/tiny-tools"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]








@pytest.fixture(scope="module")
def env(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "tiny-tools"
    subprocess.run([vllm_python(), str(TESTS / "tinymodel.py"), str(repo), "--template",
                    str(tinymodel.TOOLS_TEMPLATE)], check=True, capture_output=True, timeout=120)
    hub = subprocess.Popen([sys.executable, str(TESTS / "hubserver.py"), "--repo", f"{REPO_ID}={repo}",
                            "--port", "0"], stdout=subprocess.PIPE, text=True)
    url = hub.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    root = tmp_path_factory.mktemp("models")
    env = {"HF_ENDPOINT": url, "VMM_ROOT": str(root), "HF_HOME": str(root.parent / "hf-home"),
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "0", "NO_COLOR": "1"}
    vmm("pull", REPO_ID, "--json", env=env)
    yield env
    hub.terminate()
    hub.wait(timeout=10)


def _chat_with_tools(base: str, served: str) -> tuple[int, dict]:
    body = {"model": served, "max_tokens": 8, "temperature": 0, "tools": TOOLS, "tool_choice": "auto",
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _serve_and_ask(env: dict, *extra: str) -> tuple[int, dict]:
    port = free_port()
    proc = start_serve(REPO_ID, env, port, "--max-model-len", "4096", *extra)
    with reaped(proc):
        line = proc.stdout.readline()     # the URL, once vLLM answered a real request
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        try:
            return _chat_with_tools(line.strip(), REPO_ID)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # a graceful stop first; reaped() kills what is left
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def test_plan_and_check_choose_hermes_from_the_installed_vllm(env):
    doc = json.loads(vmm("serve", REPO_ID, "--device", "cpu", "--dry-run", "--json", env=env).stdout)
    assert doc["tool_call_parser"] == "hermes", doc["parsers"]
    assert doc["parsers"]["registry"].startswith("installed vllm"), doc["parsers"]
    command = doc["command"]
    at = command.index("--tool-call-parser")
    assert command[at - 1:at + 2] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    check = json.loads(vmm("check", REPO_ID, "--json", env=env).stdout)
    [tools] = [c for c in check["checks"] if c["name"] == "tool calls"]
    assert tools["status"] == "pass" and "hermes" in tools["detail"], tools


def test_tools_request_answers_200_with_the_parser_and_400_without(env):
    status, doc = _serve_and_ask(env)
    assert status == 200, doc
    message = doc["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message.get("tool_calls", []), list)
    assert doc["choices"][0]["finish_reason"] in ("length", "stop", "tool_calls")

    status, doc = _serve_and_ask(env, "--tool-parser", "none")
    assert status == 400, doc
    assert "--enable-auto-tool-choice" in json.dumps(doc), doc


def test_installed_parser_names_equal_the_snapshot_and_vllm_parses_the_flags(env, tmp_path):
    """The bundled snapshot of the installed version is what the installed vLLM registers, and
    the flags vmm builds from it pass vLLM's own argument parser."""
    from vmm.core.serving import parsers, vllm_env

    install = vllm_env.find_vllm()
    version = install.version
    installed = parsers.installed_registry(install, None)
    snapshot = parsers.snapshot_registry(version)
    assert installed.tool_parsers == snapshot.tool_parsers and "hermes" in installed.tool_parsers
    assert installed.reasoning_parsers == snapshot.reasoning_parsers
    argvs = []
    for rule in parsers.RULES:
        choice = parsers.choose(None, None, "x", None, installed, tool_parser=rule.tools[0] if rule.tools else "none",
                                reasoning_parser=rule.reasoning[0] if rule.reasoning else "none")
        if choice.argv():
            argvs.append(["vllm", "serve", str(tmp_path), *choice.argv()])
    assert len(argvs) >= 20
    errors = serve_arg_errors(argvs)
    assert errors == [None] * len(argvs), [(a, e) for a, e in zip(argvs, errors) if e]
    # And the check bites: vLLM's parser refuses auto tool choice without a parser name.
    [bad] = serve_arg_errors([["vllm", "serve", str(tmp_path), "--enable-auto-tool-choice"]])
    assert bad, "vLLM accepted --enable-auto-tool-choice without --tool-call-parser"
