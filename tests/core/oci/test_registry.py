"""End to end against a real registry (Debian's docker-registry) and skopeo: push, pull,
export/import, interop both ways, auth, and faults."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_error_line, run_vmm
from oci_fixtures import _fast_retries, auth_registry, registry  # noqa: F401 - fixtures
from oci_registries import FaultProxy, blob_gets, need, write_auth_file
from storage_helpers import blob, make_model

REPO_ID = "acme/tiny"


def _model(root: Path, repo_id: str = REPO_ID, big: int = 0) -> Path:
    import builders

    files = {"config.json": json.dumps(builders.TINY_LLAMA).encode(), "tokenizer.json": b'{"version": "1.0"}',
             "model-00001-of-00002.safetensors": blob("w1"), "model-00002-of-00002.safetensors": blob("w2")}
    if big:
        files["model-00001-of-00002.safetensors"] = blob("big1", big)
        files["model-00002-of-00002.safetensors"] = blob("big2", big)
    model_dir = make_model(root, repo_id, files)
    return model_dir


def _tree(model_dir: Path) -> dict[str, str]:
    return {p.relative_to(model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(model_dir.rglob("*")) if p.is_file() and ".vmm" not in p.parts
            and p.name != "chat_template.jinja"}


def _installed(root: Path, repo_id: str = REPO_ID) -> bool:
    return (root / repo_id.replace("/", "--") / ".vmm" / "manifest.json").is_file()


def test_push_then_pull_into_another_root_installs_a_verified_managed_model(tmp_path, registry):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    ref = registry.ref("models/tiny:v1")
    pushed = run_vmm("--root", src, "push", REPO_ID, ref, "--json")
    assert pushed.exit_code == 0, pushed.stderr
    doc = pushed.json()
    assert doc["layers_uploaded"] == 5 and doc["files"] == 4     # 4 files + the config blob
    again = run_vmm("--root", src, "push", REPO_ID, ref, "--json").json()
    assert again["layers_uploaded"] == 0 and again["layers_skipped"] == 5 and again["digest"] == doc["digest"]

    pulled = run_vmm("--root", dst, "pull", f"oci://{ref}", "--json", env={"HF_HUB_OFFLINE": "1"})
    assert pulled.exit_code == 0, pulled.stderr
    pdoc = pulled.json()
    for key in ("name", "path", "revision", "files", "bytes_downloaded", "bytes_total", "verified"):
        assert key in pdoc
    assert pdoc["name"] == REPO_ID and pdoc["verified"] and pdoc["digest"] == doc["digest"]
    assert _tree(dst / "acme--tiny") == _tree(model_dir)
    manifest = json.loads((dst / "acme--tiny" / ".vmm" / "manifest.json").read_text())
    assert manifest["commit"] == "a" * 40 and all(f["sha256"] and f["verified_at"] for f in manifest["files"])
    check = run_vmm("--root", dst, "check", REPO_ID, "--json")
    assert [c for c in check.json()["checks"] if c["name"] == "integrity"][0]["status"] == "pass"
    # By digest, and a second pull finds everything in place.
    by_digest = run_vmm("--root", dst, "pull", f"oci://{registry.ref('models/tiny')}@{doc['digest']}", "--json").json()
    assert by_digest["bytes_downloaded"] == 0 and by_digest["kept_files"] == 4


def test_export_tar_import_elsewhere_is_byte_identical_and_checks_offline(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    tar = tmp_path / "carry" / "tiny.tar"
    exported = run_vmm("--root", src, "export", REPO_ID, tar, "--json")
    assert exported.exit_code == 0, exported.stderr
    assert exported.json()["format"] == "oci-archive"
    imported = run_vmm("--root", dst, "import", tar, "--json", env={"HF_HUB_OFFLINE": "1"})
    assert imported.exit_code == 0, imported.stderr
    assert imported.json()["kind"] == "oci-archive" and imported.json()["digest"] == exported.json()["digest"]
    assert _tree(dst / "acme--tiny") == _tree(model_dir)
    check = run_vmm("--root", dst, "check", REPO_ID, "--json", env={"HF_HUB_OFFLINE": "1"})
    assert [c for c in check.json()["checks"] if c["name"] == "integrity"][0]["status"] == "pass"
    # The directory form too, and exporting the imported model gives the same artifact.
    again = run_vmm("--root", dst, "export", REPO_ID, tmp_path / "layout", "--json").json()
    assert again["digest"] == exported.json()["digest"]
    assert (tmp_path / "layout" / "oci-layout").is_file() and (tmp_path / "layout" / "index.json").is_file()


def test_skopeo_pushes_vmm_export_and_vmm_pulls_it(tmp_path, registry):
    skopeo = need("skopeo")
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    assert run_vmm("--root", src, "export", REPO_ID, tmp_path / "layout").exit_code == 0
    ref = registry.ref("interop/from-skopeo:1")
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    pulled = run_vmm("--root", dst, "pull", f"oci://{ref}")
    assert pulled.exit_code == 0, pulled.stderr
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_vmm_push_then_skopeo_copies_to_a_layout_that_vmm_imports(tmp_path, registry):
    skopeo = need("skopeo")
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    ref = registry.ref("interop/from-vmm:1")
    assert run_vmm("--root", src, "push", REPO_ID, ref).exit_code == 0
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'copied'}"],
                   check=True, capture_output=True, timeout=120)
    imported = run_vmm("--root", dst, "import", tmp_path / "copied")
    assert imported.exit_code == 0, imported.stderr
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_basic_auth_registry_needs_the_login_and_takes_it_from_auth_files(tmp_path, auth_registry, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _model(src)
    ref = auth_registry.ref("private/tiny:v1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    refused = run_vmm("--root", src, "push", REPO_ID, ref)
    assert_error_line(refused, 4, "needs a login", "podman login")
    wrong = write_auth_file(tmp_path / "wrong.json", auth_registry.host, password="nope")
    assert_error_line(run_vmm("--root", src, "push", REPO_ID, ref, env={"REGISTRY_AUTH_FILE": str(wrong)}), 4, "refused")
    good = write_auth_file(tmp_path / "auth.json", auth_registry.host)
    assert run_vmm("--root", src, "push", REPO_ID, ref, env={"REGISTRY_AUTH_FILE": str(good)}).exit_code == 0
    # docker's file for the pull.
    write_auth_file(tmp_path / "home" / ".docker" / "config.json", auth_registry.host)
    pulled = run_vmm("--root", dst, "pull", f"oci://{ref}")
    assert pulled.exit_code == 0, pulled.stderr
    assert _installed(dst)


def test_a_registry_that_is_not_there_and_a_missing_tag_fail_with_one_line(tmp_path, registry):
    from oci_registries import free_port

    assert_error_line(run_vmm("--root", tmp_path / "r", "pull", f"oci://127.0.0.1:{free_port()}/x:1"), 4, "kept failing")
    assert_error_line(run_vmm("--root", tmp_path / "r", "pull", f"oci://{registry.ref('nothing/here:1')}"), 3, "not found")
    assert_error_line(run_vmm("--root", tmp_path / "r", "push", "no/such", registry.ref("x:1")), 3)
    assert_error_line(run_vmm("--root", tmp_path / "r", "pull", "oci://qwen/qwen2"), 2, "registry host")


def test_an_artifact_that_is_not_a_model_exits_2_and_installs_nothing(tmp_path, registry):
    config = b"{}"
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    host, port = registry.host.split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/v2/images/app/blobs/uploads/", headers={"Content-Length": "0"})
    resp = conn.getresponse()
    resp.read()
    location = resp.getheader("Location")
    conn.request("PUT", location + ("&" if "?" in location else "?") + f"digest={cdigest}", body=config)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 201
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                                      "size": len(config)}, "layers": []}).encode()
    conn.request("PUT", "/v2/images/app/manifests/1", body=manifest,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 201, resp.status
    run = run_vmm("--root", tmp_path / "r", "pull", f"oci://{registry.ref('images/app:1')}", "--name", "x/y")
    assert_error_line(run, 2, "not a model artifact")
    assert not _installed(tmp_path / "r", "x/y")


@pytest.mark.parametrize("segment_bytes,cut_after,expected", [
    (None, 50_000, set()),                                        # 200 kB weights: one stream each
    (64 * 1024, 10_000, {"bytes=0-65535", "bytes=65536-131071", "bytes=131072-196607"}),   # 4 segments
], ids=["one-stream", "segments"])
def test_500s_and_cut_connections_are_retried_and_resumed_by_range(tmp_path, registry, monkeypatch, segment_bytes,
                                                                   cut_after, expected):
    from vmm.core.oci import install

    if segment_bytes:
        monkeypatch.setattr(install, "SEGMENT_BYTES", segment_bytes)
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    repo = f"faults/{'seg' if segment_bytes else 'one'}:1"
    assert run_vmm("--root", src, "push", REPO_ID, registry.ref(repo)).exit_code == 0
    with FaultProxy(registry.host) as proxy:
        proxy.faults.errors_500 = 3
        proxy.faults.cut_after, proxy.faults.cuts = cut_after, 2
        run = run_vmm("--root", dst, "pull", f"oci://{proxy.host}/{repo}", "--json")
        assert run.exit_code == 0, run.stderr
        ranges = {r for _m, _p, r in blob_gets(proxy)}
    assert expected <= ranges, ranges
    starts = {int(r[len("bytes="):].split("-")[0]) for r in ranges if r}
    assert any(start % (segment_bytes or 1 << 62) for start in starts), ranges     # a cut body resumed mid-way
    assert _tree(dst / "acme--tiny") == _tree(model_dir)
    assert run.json()["bytes_downloaded"] == run.json()["bytes_total"]


def test_a_registry_that_ignores_range_still_installs_the_model(tmp_path, registry, monkeypatch):
    from vmm.core.oci import install

    monkeypatch.setattr(install, "SEGMENT_BYTES", 64 * 1024)
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    assert run_vmm("--root", src, "push", REPO_ID, registry.ref("norange/tiny:1")).exit_code == 0
    with FaultProxy(registry.host) as proxy:
        proxy.faults.ignore_range = True
        run = run_vmm("--root", dst, "pull", f"oci://{proxy.host}/norange/tiny:1")
    assert run.exit_code == 0, run.stderr
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_a_segmented_import_of_a_tar_is_byte_identical(tmp_path, monkeypatch):
    from vmm.core.oci import install

    monkeypatch.setattr(install, "SEGMENT_BYTES", 48 * 1024)
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src)
    assert run_vmm("--root", src, "export", REPO_ID, tmp_path / "m.tar").exit_code == 0
    run = run_vmm("--root", dst, "import", tmp_path / "m.tar")
    assert run.exit_code == 0, run.stderr
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_a_registry_that_lies_about_a_digest_exits_5_and_installs_nothing(tmp_path, registry):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _model(src)
    assert run_vmm("--root", src, "push", REPO_ID, registry.ref("lies/tiny:1")).exit_code == 0
    with FaultProxy(registry.host) as proxy:
        proxy.faults.corrupt = True
        run = run_vmm("--root", dst, "pull", f"oci://{proxy.host}/lies/tiny:1")
    assert_error_line(run, 5, "does not match")
    model_dir = dst / "acme--tiny"
    assert not _installed(dst)
    assert not any(p.is_file() for p in model_dir.glob("*")), list(model_dir.rglob("*"))
    assert not list(model_dir.rglob("*.tmp"))
    # Nothing verified is lost, and the honest registry completes the install.
    run = run_vmm("--root", dst, "pull", f"oci://{registry.ref('lies/tiny:1')}")
    assert run.exit_code == 0, run.stderr


def test_a_corrupted_blob_in_a_layout_exits_5_and_installs_nothing(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _model(src)
    layout = tmp_path / "layout"
    assert run_vmm("--root", src, "export", REPO_ID, layout).exit_code == 0
    weights = sha = None
    for p in (layout / "blobs" / "sha256").iterdir():
        if p.stat().st_size == 200_000:
            weights, sha = p, p.name
            break
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.unlink()               # the export hardlinks: never write through to the model
    weights.write_bytes(bytes(data))
    run = run_vmm("--root", dst, "import", layout)
    assert_error_line(run, 5, "does not match its digest", f"sha256:{sha}")
    assert not _installed(dst)
    assert hashlib.sha256((src / "acme--tiny" / "model-00001-of-00002.safetensors").read_bytes()).hexdigest() != sha \
        or hashlib.sha256((src / "acme--tiny" / "model-00002-of-00002.safetensors").read_bytes()).hexdigest() != sha


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmm", *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _progress(partial: Path, in_flight: bool = False) -> int:
    """Bytes the partial blobs' progress maps say are on disk (a blob already verified: its size);
    ``in_flight``: only those of segments not complete yet."""
    total = 0
    for path in partial.glob("*"):
        if path.name.endswith(".tmp.json"):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            seg = doc["segment"]
            total += sum(doc["written"].values())
            if not in_flight:
                total += sum(min(seg, doc["size"] - i * seg) for i in doc["done"])
        elif "." not in path.name and not in_flight:
            total += path.stat().st_size
    return total


def test_pull_killed_mid_transfer_resumes_and_completes(tmp_path, registry):
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 4 * 1024 * 1024
    model_dir = _model(src, big=size)
    assert run_vmm("--root", src, "push", REPO_ID, registry.ref("kill/pull:1")).exit_code == 0
    partial = dst / "acme--tiny" / ".vmm" / "partial" / "oci"
    with FaultProxy(registry.host) as proxy:
        proxy.faults.rate = 4 * 1024 * 1024         # ~1 s per weight file
        child = _spawn("--root", dst, "pull", f"oci://{proxy.host}/kill/pull:1")
        _wait_for(lambda: _progress(partial, in_flight=True) > 0)      # inside a blob, not between two
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert 0 < _progress(partial) < 2 * size
        assert not _installed(dst)
        proxy.faults.rate = None
        run = run_vmm("--root", dst, "pull", f"oci://{proxy.host}/kill/pull:1", "--json")
        assert run.exit_code == 0, run.stderr
        assert run.json()["bytes_downloaded"] < run.json()["bytes_total"]
        assert any(r.startswith("bytes=") for _m, _p, r in blob_gets(proxy))
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_push_killed_mid_upload_resumes_and_completes(tmp_path, registry):
    src, dst = tmp_path / "src", tmp_path / "dst"
    model_dir = _model(src, big=4 * 1024 * 1024)
    with FaultProxy(registry.host) as proxy:
        proxy.faults.rate = 4 * 1024 * 1024
        child = _spawn("--root", src, "push", REPO_ID, f"{proxy.host}/kill/push:1", "--workers", "1")
        _wait_for(lambda: sum(1 for m, p, _r in proxy.faults.requests if m == "PUT" and "/blobs/uploads/" in p) >= 2)
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        child.wait()
        proxy.faults.rate = None
        run = run_vmm("--root", src, "push", REPO_ID, f"{proxy.host}/kill/push:1", "--json")
        assert run.exit_code == 0, run.stderr
        assert run.json()["layers_skipped"] >= 1
    pulled = run_vmm("--root", dst, "pull", f"oci://{registry.ref('kill/push:1')}")
    assert pulled.exit_code == 0, pulled.stderr
    assert _tree(dst / "acme--tiny") == _tree(model_dir)


def test_hub_to_vmm_to_registry_to_a_root_without_hub_then_check_and_serve_plan(tmp_path, registry, hub, monkeypatch):
    """The issue's path: Hub -> vmm pull -> vmm push -> (another root, Hub unreachable) ->
    vmm pull oci:// -> vmm check passes and vmm serve --dry-run plans it; and the tar path."""
    import builders

    published = tmp_path / "published"
    builders.make_safetensors_model(published, builders.TINY_LLAMA, shards=2)
    hub.add_repo("acme/hubmodel", published)
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert run_vmm("--root", first, "pull", "acme/hubmodel").exit_code == 0
    hub_manifest = json.loads((first / "acme--hubmodel" / ".vmm" / "manifest.json").read_text())
    ref = registry.ref("fleet/hubmodel:main")
    assert run_vmm("--root", first, "push", "acme/hubmodel", ref).exit_code == 0
    assert run_vmm("--root", first, "export", "acme/hubmodel", tmp_path / "hubmodel.tar").exit_code == 0

    no_hub = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    pulled = run_vmm("--root", second, "pull", f"oci://{ref}", "--json", env=no_hub)
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.json()["revision"] == hub_manifest["commit"]
    imported = run_vmm("--root", third, "import", tmp_path / "hubmodel.tar", env=no_hub)
    assert imported.exit_code == 0, imported.stderr
    for other in (second, third):
        got = json.loads((other / "acme--hubmodel" / ".vmm" / "manifest.json").read_text())
        assert got["repo_id"] == "acme/hubmodel" and got["commit"] == hub_manifest["commit"]
        assert {(f["path"], f["size"], f["git_sha1"]) for f in got["files"]} == \
            {(f["path"], f["size"], f["git_sha1"]) for f in hub_manifest["files"]}
        assert _tree(other / "acme--hubmodel") == _tree(first / "acme--hubmodel")
        check = run_vmm("--root", other, "check", "acme/hubmodel", "--json", env=no_hub)
        statuses = {c["name"]: c["status"] for c in check.json()["checks"]}
        assert statuses["integrity"] == "pass" and statuses["config"] == "pass", check.stdout
        plan = run_vmm("--root", other, "serve", "acme/hubmodel", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB",
                       "--json", env=no_hub)
        assert plan.exit_code == 0, plan.stderr
        assert plan.json()["command"][:3] == ["vllm", "serve", str(other / "acme--hubmodel")] or \
            str(other / "acme--hubmodel") in plan.json()["command"]


def test_documented_oci_keys_are_in_the_json_documents(tmp_path, registry):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cli"))
    from test_contract import contract_keys     # the one reader of docs/contract.md's blocks

    src, dst = tmp_path / "src", tmp_path / "dst"
    _model(src)
    ref = registry.ref("contract/tiny:1")
    docs = {"push": run_vmm("--root", src, "push", REPO_ID, ref, "--json"),
            "export": run_vmm("--root", src, "export", REPO_ID, tmp_path / "x.tar", "--json"),
            "pull_oci": run_vmm("--root", dst, "pull", f"oci://{ref}", "--json"),
            "import_oci": run_vmm("--root", tmp_path / "third", "import", tmp_path / "x.tar", "--json")}
    for command, run in docs.items():
        assert run.exit_code == 0, run.stderr
        doc = run.json()
        assert doc["schema_version"] == 1
        missing = contract_keys(command) - set(doc)
        assert not missing, f"docs/contract.md lists {sorted(missing)} for {command}, the output lacks them"


def test_https_to_a_plain_http_registry_is_one_tls_error_with_the_insecure_hint(registry):
    from vmm.core.errors import RemoteError
    from vmm.core.hub.connection import host_key
    from vmm.core.oci import reference
    from vmm.core.oci.registry import Registry

    reg = Registry(reference.parse(registry.ref("x/y:1")))
    reg.base = f"https://{registry.host}"        # what a non-loopback name gets
    reg.key = host_key(reg.base)
    with pytest.raises(RemoteError, match="TLS") as info:
        reg.get_manifest()
    assert "--insecure" in info.value.line()
    reg.close()
