"""Shared fixtures: an isolated environment, the CLI runner, and helpers.

Nothing here touches the network: HF_ENDPOINT points at a closed local port unless a test
starts the local Hub server (tests/hubserver.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_vmm(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Run:
    """Run the real CLI entry point in-process, capturing stdout and stderr separately."""
    from typer.testing import CliRunner

    from vmm import render
    from vmm.cli import main

    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _mixed):
        render.reset_consoles()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            render.reset_consoles()
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


def run_vmm_subprocess(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m vmm`` as a child: for signals, real exit codes and stdin that is not a tty."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vmm", *map(str, args)], env=full_env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_error_line(run: Run, code: int, *fragments: str) -> None:
    """The contract: exit ``code`` and exactly one ``error:`` line on stderr, no traceback."""
    assert run.exit_code == code, (run.exit_code, run.stdout, run.stderr)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own HF home, no token, no debug, and a dead Hub endpoint."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for var in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "VMM_DEBUG", "VMM_STATE_DIR",
                "HF_HUB_CACHE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty models root, also exported as VMM_ROOT."""
    path = tmp_path / "models"
    path.mkdir()
    monkeypatch.setenv("VMM_ROOT", str(path))
    return path


@pytest.fixture
def hub(monkeypatch):
    """The local Hub (tests/hubserver.py) as HF_ENDPOINT, with fast retries for fault tests."""
    from hubserver import HubServer

    from vmm.core.hub import transfer

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(transfer, "BACKOFF_BASE_S", 0.01)
        yield server


def contract_keys(command: str, after: str | None = None) -> set[str]:
    """The JSON keys docs/contract.md lists for ``command`` (the backticked names of the block
    after ``<!-- contract: command -->``, flags and enumerated values aside): the one copy of
    the contract that tests read. ``after``: only the sentence that follows that phrase (e.g.
    the keys of inspect's ``config``)."""
    import re

    doc = (REPO / "docs" / "contract.md").read_text()
    block = doc.split(f"<!-- contract: {command} -->", 1)[1].split("<!--", 1)[0]
    if after is not None:
        block = block.split(after, 1)[1].split(". ", 1)[0]
    names = set(re.findall(r"`([a-z_]+)`", block))
    return names - {"null", "safetensors", "pytorch", "gguf", "mixed", "unknown", "pass", "warn", "fail",
                    "family", "chat_template", "tokenizer_config"}
