"""Real OCI components for tests: Debian's `docker-registry` (the CNCF distribution registry)
on a free 127.0.0.1 port with a tmp storage dir, with or without htpasswd basic auth, and a
stdlib HTTP proxy in front of it that injects faults (500s, cut bodies, rewritten bytes,
a slow body).

`.ci/run` installs `docker-registry`, `skopeo` and `apache2-utils` (htpasswd); tests skip
with the reason when a binary is missing.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

USER, PASSWORD = "vmm-tester", "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install docker-registry skopeo apache2-utils; .ci/run does)")
    return path


@dataclass
class RunningRegistry:
    host: str                      # 127.0.0.1:PORT
    storage: Path
    proc: subprocess.Popen
    auth: bool = False

    def ref(self, repo: str) -> str:
        return f"{self.host}/{repo}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(workdir: Path, auth: bool = False) -> RunningRegistry:
    binary = need("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = workdir / "storage"
    auth_block = ""
    if auth:
        htpasswd = need("htpasswd")
        pw_file = workdir / "htpasswd"
        subprocess.run([htpasswd, "-Bbc", str(pw_file), USER, PASSWORD], check=True, capture_output=True)
        auth_block = f"auth:\n  htpasswd:\n    realm: vmm-test\n    path: {pw_file}\n"
    config = workdir / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_block}")
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/")
            status = conn.getresponse().status
            conn.close()
            if status in (200, 401):
                return RunningRegistry(f"127.0.0.1:{port}", storage, proc, auth)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start in 20 s")


def write_auth_file(path: Path, host: str, user: str = USER, password: str = PASSWORD) -> Path:
    import base64
    import json

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


# --------------------------------------------------------------------------- the fault proxy

@dataclass
class Faults:
    errors_500: int = 0                 # the next N blob GETs answer 500
    cut_after: int | None = None        # blob GET bodies stop after this many bytes (once each)
    cuts: int = 0                       # how many bodies to cut
    corrupt: bool = False               # flip a byte in every blob GET body
    rate: int | None = None             # bytes/s for blob bodies (GET and upload)
    ignore_range: bool = False          # drop Range headers: the registry answers 200 with the whole blob
    requests: list[tuple[str, str, str]] = field(default_factory=list)   # (method, path, Range)


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` (host:port), faults per :class:`Faults`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                is_blob_get = self.command == "GET" and "/blobs/sha256:" in self.path
                with proxy.lock:
                    proxy.faults.requests.append((self.command, self.path, self.headers.get("Range", "")))
                    fail = is_blob_get and proxy.faults.errors_500 > 0
                    if fail:
                        proxy.faults.errors_500 -= 1
                    cut = proxy.faults.cut_after if (is_blob_get and proxy.faults.cuts > 0) else None
                if fail:
                    self.rfile.read(length)
                    body = b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}'
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                host, port = proxy.upstream.split(":")
                up = http.client.HTTPConnection(host, int(port), timeout=60)
                dropped = ("connection", "transfer-encoding") + (("range",) if proxy.faults.ignore_range else ())
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in dropped]
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:            # repeated headers (several Accept lines) kept
                    up.putheader(k, v)
                up.endheaders()
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    up.send(chunk)
                    proxy._throttle(len(chunk))
                resp = up.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                        self.send_header(k, v)
                data_len = resp.getheader("Content-Length")
                if data_len is None and self.command != "HEAD":
                    body = resp.read()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    up.close()
                    return
                self.end_headers()
                if self.command == "HEAD":
                    up.close()
                    return
                sent = 0
                flipped = False
                while True:
                    chunk = resp.read(64 * 1024)
                    if not chunk:
                        break
                    if is_blob_get and proxy.faults.corrupt and not flipped and resp.status in (200, 206):
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                        flipped = True
                    if cut is not None and sent + len(chunk) > cut and proxy._take_cut():
                        self.wfile.write(chunk[:cut - sent])
                        self.wfile.flush()
                        up.close()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if is_blob_get:
                        proxy._throttle(len(chunk))
                up.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass        # a client that went away mid-body (a kill -9, a cut): not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _take_cut(self) -> bool:
        with self.lock:
            if self.faults.cuts <= 0:
                return False
            self.faults.cuts -= 1
            return True

    def _throttle(self, n: int) -> None:
        rate = self.faults.rate
        if rate:
            time.sleep(n / rate)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def blob_gets(proxy: FaultProxy) -> list[tuple[str, str, str]]:
    return [r for r in proxy.faults.requests if r[0] == "GET" and "/blobs/sha256:" in r[1]]


def env_without_hub() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


