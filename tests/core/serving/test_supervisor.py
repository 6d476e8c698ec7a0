"""Running vLLM (supervisor.py, with the fake vLLM): exit codes at each phase of start-up, the
signals, vLLM failing on its own, and output handed to callbacks rather than printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import builders as b
from conftest import REPO, free_port

FAKE_BIN = REPO / "tests" / "fakevllm"
TINY = {**b.LLAMA3_8B_INSTRUCT, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 1000, "max_position_embeddings": 512,
        "torch_dtype": "float32"}




@pytest.fixture
def fake_env(root, tmp_path):
    b.make_model(root, "org/tiny", cfg=TINY)
    return {"PATH": f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}", "VMM_ROOT": str(root)}


class Serve:
    """`vmm serve` as a child, its stderr read line by line so a test can wait for a phase."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmm", "serve", "org/tiny", "--device", "cpu", "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, **env})
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        with self._seen:
            ok = self._seen.wait_for(lambda: any(text in ln for ln in self.lines) or self.proc.poll() is not None,
                                     timeout=timeout_s)
        assert ok and any(text in ln for ln in self.lines), (text, self.lines)

    def finish(self, timeout_s: float = 60) -> tuple[int, str, list[str]]:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code, self.proc.stdout.read(), self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _errors(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("error:")]


# Before /health answers (the fake's signal handlers are in place, /health says 503), and once
# /health answered but the first completion hangs (vmm has not said ready).
PHASES = {"before health": ({"FAKE_VLLM_DELAY": "120"}, "INFO serving"),
          "after health, before ready": ({"FAKE_VLLM_FIRST_REQUEST_DELAY": "120"}, "first request")}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("sig, expected", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_stop_during_start_up_is_a_clean_stop(fake_env, phase, sig, expected):
    env, marker = PHASES[phase]
    serve = Serve({**fake_env, **env})
    try:
        serve.wait_for(marker)
        serve.proc.send_signal(sig)
        code, out, lines = serve.finish()
    finally:
        serve.kill()
    assert code == expected, lines
    assert _errors(lines) == [] and out == ""
    assert any("shutting down on signal" in ln for ln in lines)       # vLLM got the signal


def test_stop_before_ready_passes_on_vllms_own_code_for_sigterm(fake_env):
    serve = Serve({**fake_env, "FAKE_VLLM_DELAY": "120", "FAKE_VLLM_EXIT_ON_TERM": "3"})
    try:
        serve.wait_for("INFO serving")           # its signal handlers are in place; /health says 503
        serve.proc.send_signal(signal.SIGTERM)
        code, _, lines = serve.finish()
    finally:
        serve.kill()
    assert code == 3 and _errors(lines) == [], lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_after_ready_is_vllms_own_code(fake_env, sig):
    serve = Serve({**fake_env, "FAKE_VLLM_EXIT_ON_TERM": "4"})
    try:
        assert serve.proc.stdout.readline().startswith("http://")
        serve.proc.send_signal(sig)
        code, _, lines = serve.finish()
    finally:
        serve.kill()
    assert code == 4 and _errors(lines) == [], lines


def test_second_signal_kills_a_vllm_that_ignores_the_first(fake_env):
    serve = Serve({**fake_env, "FAKE_VLLM_DELAY": "120", "FAKE_VLLM_IGNORE_TERM": "1"})
    try:
        serve.wait_for("INFO serving")           # its signal handlers are in place; /health says 503
        serve.proc.send_signal(signal.SIGTERM)
        serve.wait_for("ignoring the first SIGTERM")
        serve.proc.send_signal(signal.SIGTERM)
        code, _, lines = serve.finish()
    finally:
        serve.kill()
    assert code == 128 + signal.SIGKILL and _errors(lines) == [], lines


@pytest.mark.parametrize("vllm_code", ["1", "2", "3", "7"])
def test_vllm_failing_alone_before_ready_is_exit_6_with_its_code_and_last_lines(fake_env, vllm_code):
    serve = Serve({**fake_env, "FAKE_VLLM_FAIL": vllm_code})
    try:
        code, out, lines = serve.finish()
    finally:
        serve.kill()
    assert code == 6 and out == "", lines
    assert any("CUDA out of memory" in ln for ln in lines if not ln.startswith("error:"))   # shown as it came
    [error] = _errors(lines)
    assert f"exited during start-up: exit code {vllm_code}: " in error
    assert "CUDA out of memory" in error and "gpu-memory-utilization" in error


def test_detached_vllm_failing_alone_names_its_log(fake_env):
    serve = Serve({**fake_env, "FAKE_VLLM_FAIL": "2"}, "--detach")
    try:
        code, _, lines = serve.finish()
    finally:
        serve.kill()
    [error] = _errors(lines)
    assert code == 6 and "exit code 2" in error and "CUDA out of memory" in error, lines


def test_launcher_hands_output_and_hints_to_callbacks_and_prints_nothing(fake_env, root, monkeypatch, capfd):
    from vmm.core.serving import launcher, supervisor
    from vmm.core.serving.request import ServeRequest

    monkeypatch.setenv("PATH", fake_env["PATH"])
    monkeypatch.setenv("FAKE_VLLM_FAIL", "9")
    req = ServeRequest(name="org/tiny", model_dir=root / "org--tiny", served_name="org/tiny",
                       port=free_port(), device="cpu")
    seen: list[str] = []
    with pytest.raises(supervisor.VllmExited) as caught:
        supervisor.run(launcher.build(req), req, root, on_line=seen.append)
    assert caught.value.exit_code == 6 and caught.value.vllm_exit_code == 9
    assert "INFO fake vllm starting" in seen and any("CUDA out of memory" in ln for ln in seen)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
