"""ps / stop / logs, against real processes vmm did not fake itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import assert_error_line, free_port, run_vmm, run_vmm_subprocess
from vmm.core.errors import NotFoundError
from vmm.core.serving import metrics, runtime
from vmm.core.store import paths

# A stand-in for a vLLM server's /metrics: counters grow by 50 tokens per second.
METRICS_SERVER = r'''
import http.server, signal, sys, time
t0 = time.monotonic()
if len(sys.argv) > 2 and sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path != "/metrics":
            self.send_response(404); self.end_headers(); return
        gen = int((time.monotonic() - t0) * 50)
        body = (
            "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}.0\n'
            f'vllm:generation_tokens_total{{engine="1",model_name="m"}} {gen}.0\n'
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 7.0\n'
        ).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
'''




@pytest.fixture
def server(tmp_path, root):
    """Start a metrics server in its own session, registered as vmm would register vLLM."""
    procs = []

    def start(model="org/tiny", ignore_term=False):
        port = free_port()
        script = tmp_path / "metrics_server.py"
        script.write_text(METRICS_SERVER)
        args = [sys.executable, str(script), str(port)] + (["ignore-term"] if ignore_term else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout.readline().strip() == b"ready"
        procs.append(proc)
        model_dir = root / model.replace("/", "--")
        model_dir.mkdir(exist_ok=True)
        log = paths.logs_dir(root) / f"{model_dir.name}-{port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"line {i}\n" for i in range(1, 301)))
        record = runtime.record_for(model, model_dir, proc.pid, "127.0.0.1", port,
                                    ["vllm", "serve", str(model_dir), "--port", str(port)], log, True)
        runtime.register(root, record)
        return proc, record

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_ps_reports_live_metrics_and_token_rate(server, root):
    _, record = server()
    result = run_vmm("ps", "--json", "--interval", "0.5")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema_version"] == 1
    [entry] = doc["servers"]
    assert entry["alive"] is True and entry["port"] == record.port and entry["model"] == "org/tiny"
    assert entry["running"] == 3 and entry["waiting"] == 1 and entry["kv_cache_usage"] == 0.25
    # Two engines each add 50 tokens/s: the summed rate is about 100/s.
    assert 60 < entry["generation_tokens_per_s"] < 140
    assert entry["prompt_tokens_per_s"] == 0


def test_ps_table_shows_the_server(server):
    _, record = server()
    result = run_vmm("ps", "--interval", "0")
    assert result.exit_code == 0
    assert "org/tiny" in result.stdout and str(record.port) in result.stdout


def test_ps_cleans_up_dead_entries(server, root):
    proc, record = server()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = run_vmm("ps", "--json", "--interval", "0").json()
    assert [s["alive"] for s in first["servers"]] == [False]
    assert run_vmm("ps", "--json").json()["servers"] == []
    assert not list(paths.run_dir(root).glob("*.json"))


def test_a_reused_pid_is_not_taken_for_the_server(root):
    record = runtime.record_for("org/x", root / "org--x", os.getpid(), "127.0.0.1", 1, ["vllm", "serve", "x"])
    record.pid_start = "1"  # this test process did not start at boot tick 1
    assert runtime.pid_alive(os.getpid(), runtime.process_start_time(os.getpid()))
    assert not runtime.pid_alive(record.pid, record.pid_start)


def test_a_server_started_outside_vmm_is_not_listed(server, root, tmp_path):
    """Two identical metrics servers, one registered by vmm and one started by hand: ps lists
    exactly vmm's (ps reads vmm's records; it neither scans processes nor probes ports)."""
    _, record = server("org/ours")
    port = free_port()
    script = tmp_path / "outside.py"
    script.write_text(METRICS_SERVER)
    outside = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE)
    try:
        assert outside.stdout.readline().strip() == b"ready"
        servers = run_vmm("ps", "--json", "--interval", "0").json()["servers"]
        assert [(s["model"], s["port"], s["alive"]) for s in servers] == [("org/ours", record.port, True)]
    finally:
        outside.kill()
        outside.wait()


def test_stop_by_port_sends_sigterm_and_removes_the_record(server, root):
    proc, record = server()
    # A separate process: an in-process stop could reap this test's child before proc.wait().
    result = run_vmm_subprocess("stop", str(record.port), "--json")
    assert result.returncode == 0, result.stderr
    [stopped] = json.loads(result.stdout)["stopped"]
    assert stopped["stopped"] is True and stopped["signal"] == "SIGTERM"
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert runtime.list_records(root) == []


def test_stop_kills_a_server_that_ignores_sigterm(server):
    proc, _ = server(model="org/stubborn", ignore_term=True)
    result = run_vmm_subprocess("stop", "org/stubborn", "--timeout", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stopped"][0]["signal"] == "SIGKILL"
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_stop_all(server, root):
    server(model="org/a")
    server(model="org/b")
    result = run_vmm("stop", "--all", "--json")
    assert sorted(s["model"] for s in result.json()["stopped"]) == ["org/a", "org/b"]
    assert runtime.list_records(root) == []


def test_stop_unknown_is_not_found(root):
    assert_error_line(run_vmm("stop", "org/nothing"), 3, "org/nothing")
    assert_error_line(run_vmm("stop"), 2, "nothing to stop")
    assert_error_line(run_vmm("stop", "../etc"), 2)


def test_logs_prints_the_last_lines(server):
    server()
    result = run_vmm("logs", "org/tiny", "-n", "3")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["line 298", "line 299", "line 300"]


def test_logs_of_a_stopped_server_are_still_readable(server):
    _, record = server()
    assert run_vmm("stop", str(record.port)).exit_code == 0
    assert run_vmm("logs", "org/tiny", "-n", "1").stdout == "line 300\n"


def test_logs_unknown_is_not_found(root):
    assert_error_line(run_vmm("logs", "org/none"), 3, "org/none")


def test_prometheus_parser_sums_label_sets_and_skips_garbage():
    text = 'a{x="1"} 2\na{x="2"} 3.5\n# comment\nb 1e3\nbad line here\nc{} NaNx\n'
    assert metrics.parse_prometheus(text) == {"a": 5.5, "b": 1000.0}


def test_v0_kv_cache_metric_name_is_understood():
    picked = metrics.pick_metrics(metrics.parse_prometheus("vllm:gpu_cache_usage_perc 0.5\n"))
    assert picked["kv_cache_usage"] == 0.5


def test_follow_yields_the_tail_then_appended_lines_whole(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("one\ntwo\nthree\n")
    done = threading.Event()
    lines = runtime.follow(log, 2, stop=done.is_set, poll_s=0.01)
    assert [next(lines), next(lines)] == ["two", "three"]
    with open(log, "ab") as handle:
        handle.write(b"four\nfive\n")
    assert [next(lines), next(lines)] == ["four", "five"]
    done.set()
    assert list(lines) == []


def test_follow_of_a_vanished_log_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="log file is gone"):
        list(runtime.follow(tmp_path / "gone.log", 5, stop=lambda: True))
