"""What every real-vLLM (e2e) test needs: the vLLM venv's Python, a free port, vmm as a
child process, and a clean end for a served vLLM (its process group gone, its temp files
removed)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from conftest import free_port  # noqa: F401 - the lane's tests take it from here

VLLM_TEMP_GLOB = "/tmp/vllm_dist_*"       # what vLLM's CPU workers leave behind


_VALIDATE = r"""
import json, sys
argvs = json.loads(sys.argv[1])
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM < 0.32
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # vLLM < 0.11
    from vllm.utils import FlexibleArgumentParser

class Refused(Exception):
    pass

parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
def error(message):
    raise Refused(message)
parser.error = error
verdicts = []
for argv in argvs:
    try:
        validate_parsed_serve_args(parser.parse_args(argv))
    except (Refused, TypeError, ValueError) as exc:
        verdicts.append({"ok": False, "error": str(exc)})
    else:
        verdicts.append({"ok": True})
print("VMM-VERDICTS:" + json.dumps(verdicts))
"""


def serve_arg_errors(argvs: list[list[str]], python: str | None = None, timeout_s: float = 300) -> list[str | None]:
    """Each ``vllm serve ...`` argv through the installed vLLM's own argument parser and
    ``validate_parsed_serve_args`` (vllm/entrypoints/launchers/cli_args.py, 0.32), in one
    process (importing the parser costs seconds): None, or vLLM's complaint, for each."""
    stripped = [list(a[2:]) if len(a) >= 2 and os.path.basename(a[0]) == "vllm" and a[1] == "serve" else list(a)
                for a in argvs]
    proc = subprocess.run([python or vllm_python(), "-c", _VALIDATE, json.dumps(stripped)], capture_output=True,
                          text=True, timeout=timeout_s, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VMM-VERDICTS:")), None)
    assert line is not None, f"vLLM's argument parser failed: {proc.stderr[-2000:]}"
    verdicts = json.loads(line.removeprefix("VMM-VERDICTS:"))
    return [None if v.get("ok") else " ".join(str(v.get("error", "")).split()) for v in verdicts]


def vllm_python() -> str:
    from vmm.core.serving import vllm_env

    found = vllm_env.find_vllm()
    if found is None or not found.python:
        pytest.fail("no `vllm` on PATH: run this lane through scripts/test-e2e")
    return found.python




def vmm(*args, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vmm", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr[-3000:])
    return proc


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def assert_group_gone(proc: subprocess.Popen, within_s: float = 20) -> None:
    """vmm and every vLLM process it started have exited."""
    deadline = time.monotonic() + within_s
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(proc.pid), "vLLM processes were left running"


@contextmanager
def reaped(proc: subprocess.Popen):
    """Whatever the test does with ``proc`` (a `vmm serve` started in its own session), end
    its process group afterwards and remove the temp files its vLLM made."""
    before = set(glob.glob(VLLM_TEMP_GLOB))
    try:
        yield proc
    finally:
        if proc.poll() is None or group_alive(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for path in set(glob.glob(VLLM_TEMP_GLOB)) - before:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


def start_serve(repo_id: str, env: dict, port: int, *extra: str) -> subprocess.Popen:
    """`vmm serve REPO --device cpu` as a child in its own session (signals go to the group)."""
    return subprocess.Popen([sys.executable, "-m", "vmm", "serve", repo_id, "--device", "cpu", "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
