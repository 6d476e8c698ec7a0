"""The registry client's auth against a stdlib fake: the Bearer token flow of distribution's
token spec, and credentials that never follow a redirect to blob storage."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from oci_fixtures import _fast_retries  # noqa: F401 - fixture
from oci_registries import write_auth_file
from vmm.core.errors import RemoteError
from vmm.core.oci import reference
from vmm.core.oci.registry import Registry

BLOB = b"weights" * 1000
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
USER, PASSWORD, TOKEN = "robot", "pw", "tok-123"


class Fake:
    """A registry (Bearer auth, token realm on itself) and a storage host blobs redirect to."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []     # (server, path, Authorization)
        fake = self

        class Registry(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a):
                pass

            def _send(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                auth = self.headers.get("Authorization")
                fake.seen.append(("registry", self.path, auth))
                parts = urlsplit(self.path)
                if parts.path == "/token":
                    q = parse_qs(parts.query)
                    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                    if auth != good or q.get("service") != ["fake"] or q.get("scope") != ["repository:r:pull"]:
                        return self._send(401)
                    return self._send(200, json.dumps({"token": TOKEN}).encode())
                if auth != f"Bearer {TOKEN}":
                    realm = f"http://127.0.0.1:{fake.registry.server_address[1]}/token"
                    return self._send(401, b"{}", {"WWW-Authenticate":
                                                   f'Bearer realm="{realm}",service="fake",scope="repository:r:pull"'})
                if parts.path == f"/v2/r/blobs/{DIGEST}":
                    port = fake.storage.server_address[1]
                    return self._send(307, b"", {"Location": f"http://localhost:{port}/bucket/{DIGEST}?sig=x"})
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')

        class Storage(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a):
                pass

            def do_GET(self):
                fake.seen.append(("storage", self.path, self.headers.get("Authorization")))
                body = BLOB
                status = 200
                rng = self.headers.get("Range")
                headers = {}
                if rng:
                    start, end = rng.split("=")[1].split("-")
                    start, end = int(start), int(end) if end else len(BLOB) - 1
                    body, status = BLOB[start:end + 1], 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(BLOB)}"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.registry = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
        for server in (self.registry, self.storage):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.registry.server_address[1]}"

    def close(self) -> None:
        for server in (self.registry, self.storage):
            server.shutdown()
            server.server_close()


@pytest.fixture
def fake():
    server = Fake()
    yield server
    server.close()


def _fetch(reg: Registry, start: int = 0) -> bytes:
    got = bytearray()
    reg.fetch_blob(DIGEST, start, len(BLOB), len(BLOB), lambda v: got.extend(v), lambda: None)
    return bytes(got)


def test_bearer_token_flow_and_no_credentials_to_the_storage_redirect(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_auth_file(tmp_path / "auth.json", fake.host, USER, PASSWORD)))
    reg = Registry(reference.parse(f"{fake.host}/r:1"))
    try:
        assert _fetch(reg) == BLOB
        assert _fetch(reg, start=100) == BLOB[100:]
    finally:
        reg.close()
    token_calls = [s for s in fake.seen if s[1].startswith("/token")]
    assert len(token_calls) == 1 and token_calls[0][2].startswith("Basic ")
    assert any(s[0] == "registry" and s[2] == f"Bearer {TOKEN}" for s in fake.seen)
    storage = [s for s in fake.seen if s[0] == "storage"]
    assert len(storage) == 2 and all(auth is None for _srv, _p, auth in storage), storage


def test_bearer_with_wrong_credentials_and_without_any_is_one_remote_error(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_auth_file(tmp_path / "bad.json", fake.host, USER, "wrong")))
    reg = Registry(reference.parse(f"{fake.host}/r:1"))
    with pytest.raises(RemoteError, match="token service refused"):
        _fetch(reg)
    reg.close()
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    reg = Registry(reference.parse(f"{fake.host}/r:1"))
    with pytest.raises(RemoteError, match="needs a login"):
        _fetch(reg)
    reg.close()
