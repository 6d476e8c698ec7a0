"""`vmm pull` against the local Hub server (tests/hubserver.py): no network beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_error_line, run_vmm

from vmm.core.hub import partial, transfer
from vmm.core.store import local, locking, manifests

PULL_KEYS = {"schema_version", "name", "path", "revision", "files", "bytes_downloaded", "bytes_total", "verified"}


def _rand(n: int, seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


BASE_FILES = {
    "config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
    "tokenizer.json": b'{"version": "1.0"}',
    "added_tokens.json": b"",
    "model-00001-of-00002.safetensors": _rand(3_000_000, 1),
    "model-00002-of-00002.safetensors": _rand(1_200_000, 2),
    "model.safetensors.index.json": b'{"weight_map": {}}',
    "pytorch_model.bin": _rand(50_000, 3),
    "original/consolidated.00.pth": _rand(40_000, 4),
}


def _files(root: Path, dir_name: str = "org--tiny", with_template: bool = False) -> dict[str, bytes]:
    """The repo files in a pulled model; the chat template vmm adds (the test repos have
    none of their own) only when asked for."""
    base = root / dir_name
    files = {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*")
             if p.is_file() and not p.relative_to(base).as_posix().startswith(".vmm/")}
    if not with_template:
        files.pop("chat_template.jinja", None)
    return files


EXPECTED = {k: v for k, v in BASE_FILES.items() if k not in ("pytorch_model.bin", "original/consolidated.00.pth")}


def test_fresh_pull_is_byte_identical_with_manifest_and_json_contract(hub, root):
    commit = hub.add_repo("org/tiny", BASE_FILES)
    run = run_vmm("pull", "org/tiny", "--json", "--chunk-size", "256KiB")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert PULL_KEYS <= set(doc)
    assert doc["revision"] == commit and doc["verified"] is True
    assert doc["files"] == len(EXPECTED)
    assert doc["bytes_total"] == doc["bytes_downloaded"] == sum(map(len, EXPECTED.values()))
    files = _files(root, with_template=True)
    # The repo ships no chat template: pull gives it its family's (setup_chat_template), recorded as vmm's.
    assert files.pop("chat_template.jinja").startswith(b"{")
    assert doc["chat_template_written"] is True and doc["chat_template"].startswith("family ")
    assert files == EXPECTED
    manifest = manifests.read_manifest(root / "org--tiny")
    assert manifest.commit == commit and manifest.revision == "main"
    assert manifest.extra["chat_template"]["written_by"] == "vmm"
    assert manifest.use_counts.get("pull") == 1
    by_path = {f.path: f for f in manifest.files}
    assert by_path["model-00001-of-00002.safetensors"].sha256 == hashlib.sha256(
        BASE_FILES["model-00001-of-00002.safetensors"]).hexdigest()
    cfg = BASE_FILES["config.json"]
    assert by_path["config.json"].git_sha1 == hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()
    assert not (root / "org--tiny" / ".vmm" / "partial").exists()
    # Not a terminal: plain progress lines on stderr, nothing but the document on stdout.
    assert "pull org/tiny: 100.0%" in run.stderr


def test_duplicate_formats_skipped_unless_all_files(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    assert run_vmm("pull", "org/tiny", "--all-files").exit_code == 0
    assert _files(root) == BASE_FILES


def test_second_pull_transfers_nothing(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    hub.reset_counters()
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["bytes_downloaded"] == 0
    assert hub.total_served() == 0
    assert [r.path for r in hub.requests if "/resolve/" in r.path] == []
    assert len(hub.requests) == 1   # one metadata call


def test_pull_resumes_after_sigkill_without_refetching_finished_chunks(hub, root):
    big = _rand(6 * 1024 * 1024, 7)
    hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": big})
    hub.faults.rate_bytes_per_s = 1024 * 1024   # per connection
    env = {**os.environ, "HF_ENDPOINT": hub.url, "VMM_ROOT": str(root)}
    child = subprocess.Popen([sys.executable, "-m", "vmm", "pull", "org/tiny", "--workers", "2",
                              "--chunk-size", "256KiB"], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunk_map = root / "org--tiny" / ".vmm" / "partial" / "model.safetensors.part.json"
    deadline = time.time() + 30
    done = []
    while time.time() < deadline:
        try:
            done = json.loads(chunk_map.read_text())["done"]
        except (OSError, ValueError):
            done = []
        if len(done) >= 8:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(done) >= 8, "the child made no progress"
    first = hub.count("model.safetensors")
    assert first < len(big)
    hub.faults.rate_bytes_per_s = None
    run = run_vmm("pull", "org/tiny", "--chunk-size", "256KiB")
    assert run.exit_code == 0, run.stderr
    assert (root / "org--tiny" / "model.safetensors").read_bytes() == big
    total = hub.count("model.safetensors")
    # Everything finished before the kill was kept: well under 2x the file.
    assert total <= len(big) + first - len(done) * 256 * 1024 + 2 * 256 * 1024
    assert total < 1.6 * len(big)


def test_corrupted_bytes_are_detected_and_refetched(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    hub.faults.add("corrupt", path="model-00001-of-00002.safetensors", offset=1_000_000, times=1)
    hub.faults.add("corrupt", path="config.json", offset=3, times=1)
    run = run_vmm("pull", "org/tiny", "--chunk-size", "256KiB")
    assert run.exit_code == 0, run.stderr
    assert _files(root) == EXPECTED
    assert hub.count("model-00001-of-00002.safetensors") >= 2 * 3_000_000


def test_corruption_that_never_stops_exits_5_naming_the_file(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    hub.faults.add("corrupt", path="model-00002-of-00002.safetensors", offset=10, times=None)
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 5, "model-00002-of-00002.safetensors", "hash mismatch")
    assert not (root / "org--tiny" / "model-00002-of-00002.safetensors").exists()
    assert manifests.read_manifest(root / "org--tiny") is None


def test_5xx_storm_is_survived(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    hub.faults.add("status", status=503, times=12)
    run = run_vmm("pull", "org/tiny", "--chunk-size", "512KiB")
    assert run.exit_code == 0, run.stderr
    assert _files(root) == EXPECTED


def test_endless_5xx_exits_4(hub, root, monkeypatch):
    monkeypatch.setattr(transfer, "CHUNK_ATTEMPTS", 3)
    hub.add_repo("org/tiny", BASE_FILES)
    hub.faults.add("status", status=500, path="config.json", times=None)
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 4, "config.json", "HTTP 500")


def test_429_retry_after_is_honoured(hub, root):
    hub.add_repo("org/tiny", {"config.json": b"{}"})
    hub.faults.add("status", status=429, retry_after=0.6, times=1)
    began = time.monotonic()
    run = run_vmm("pull", "org/tiny", "--workers", "1")
    assert run.exit_code == 0, run.stderr
    assert time.monotonic() - began >= 0.6


def test_connection_resets_mid_body_are_survived(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    hub.faults.add("reset", path="*.safetensors", after_bytes=100_000, times=4)
    run = run_vmm("pull", "org/tiny", "--chunk-size", "1MiB")
    assert run.exit_code == 0, run.stderr
    assert _files(root) == EXPECTED


def test_too_little_disk_exits_7_before_writing(hub, root, monkeypatch):
    hub.add_repo("org/tiny", BASE_FILES)
    monkeypatch.setattr(local, "free_bytes", lambda path: 1_000_000)
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 7, "bytes needed", "1000000 free")
    assert hub.total_served() == 0
    assert not (root / "org--tiny").exists() or _files(root) == {}


def test_enospc_mid_transfer_exits_7_keeping_partial_data(hub, root, monkeypatch):
    hub.add_repo("org/tiny", {"model.safetensors": _rand(2_000_000, 9)})
    real = os.pwrite
    written = {"bytes": 0}

    def failing(fd, data, offset):
        # The disk fills up once the first two 256 KiB chunks are written (small writes are
        # the lock file's holder record).
        if len(data) < 4096:
            return real(fd, data, offset)
        if written["bytes"] >= 512 * 1024:
            raise OSError(28, "No space left on device")
        n = real(fd, data[:512 * 1024 - written["bytes"]], offset)
        written["bytes"] += n
        return n

    monkeypatch.setattr(partial.os, "pwrite", failing)
    run = run_vmm("pull", "org/tiny", "--chunk-size", "256KiB", "--workers", "1")
    assert_error_line(run, 7, "no space left")
    state = json.loads((root / "org--tiny/.vmm/partial/model.safetensors.part.json").read_text())
    assert state["done"] == [0, 1]
    part = (root / "org--tiny/.vmm/partial/model.safetensors.part").read_bytes()
    assert part[:512 * 1024] == _rand(2_000_000, 9)[:512 * 1024]


def test_path_traversal_in_listing_is_refused_and_nothing_escapes(hub, root, tmp_path):
    hub.add_repo("org/tiny", {"config.json": b"{}", "../evil": b"pwned", "../../evil2": b"x"})
    run = run_vmm("pull", "org/tiny")
    assert_error_line(run, 5, "escape")
    assert not (root / "evil").exists() and not (tmp_path / "evil2").exists()
    assert hub.total_served() == 0


def test_no_wait_exits_8_while_another_pull_holds_the_lock(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    with locking.model_lock(root, "org--tiny", "pull"):
        run = run_vmm("pull", "org/tiny", "--no-wait")
    assert_error_line(run, 8, "locked")
    assert hub.total_served() == 0


def test_second_pull_waits_for_the_first_with_a_message(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "VMM_ROOT": str(root)}
    seen: list[str] = []
    with locking.model_lock(root, "org--tiny", "pull"):
        child = subprocess.Popen([sys.executable, "-m", "vmm", "pull", "org/tiny"], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Hold the lock until the child says it waits for it (no sleep: a slow start must not
        # find the lock already free).
        reader = threading.Thread(target=lambda: seen.extend(iter(child.stderr.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("waiting for the lock" in line for line in seen) and time.monotonic() < deadline:
            assert child.poll() is None, seen
            time.sleep(0.02)
        assert any("waiting for the lock" in line for line in seen), seen
    assert child.wait(timeout=60) == 0, seen
    reader.join(timeout=10)
    assert _files(root) == EXPECTED


def test_lock_of_a_sigkilled_holder_is_taken_over(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    code = ("import sys,time; from pathlib import Path; from vmm.core.store import locking\n"
            "with locking.model_lock(Path(sys.argv[1]), 'org--tiny', 'pull'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert locking.is_locked(root, "org--tiny")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    run = run_vmm("pull", "org/tiny", "--no-wait")
    assert run.exit_code == 0, run.stderr


def test_unknown_repo_revision_or_file_exits_3(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    assert_error_line(run_vmm("pull", "org/nope"), 3, "org/nope")
    assert_error_line(run_vmm("pull", "org/tiny@nobranch"), 3, "nobranch")
    assert_error_line(run_vmm("pull", "org/tiny", "--include", "*.nothing"), 3, "no files")


def test_gated_repo_without_token_exits_4_with_login_hint(hub, root):
    hub.add_repo("org/gated", BASE_FILES, gated_tokens={"hf_good"})
    assert_error_line(run_vmm("pull", "org/gated"), 4, "hf auth login", "HF_TOKEN")
    assert_error_line(run_vmm("pull", "org/gated", env={"HF_TOKEN": "hf_bad"}), 4, "hf auth login")


def test_token_goes_to_the_endpoint_host_but_never_to_the_cdn(hub, root, monkeypatch):
    hub.add_repo("org/gated", BASE_FILES, gated_tokens={"hf_good"})
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    run = run_vmm("pull", "org/gated")
    assert run.exit_code == 0, run.stderr
    resolve = [r for r in hub.requests if not r.cdn and "/resolve/" in r.path]
    cdn = [r for r in hub.requests if r.cdn]
    assert resolve and cdn
    assert all(r.headers.get("Authorization") == "Bearer hf_good" for r in resolve)
    assert all("Authorization" not in r.headers for r in cdn)


def test_token_from_hf_auth_login_file_is_used(hub, root, tmp_path):
    hub.add_repo("org/gated", {"config.json": b"{}"}, gated_tokens={"hf_file"})
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("hf_file\n")
    assert run_vmm("pull", "org/gated").exit_code == 0


GGUF_FILES = {
    "README.md": b"# gguf",
    "tiny-Q4_K_M.gguf": _rand(30_000, 11),
    "tiny-Q8_0-00001-of-00002.gguf": _rand(20_000, 12),
    "tiny-Q8_0-00002-of-00002.gguf": _rand(20_000, 13),
}


def test_gguf_quant_picks_all_split_parts_and_non_weight_files(hub, root):
    hub.add_repo("org/tiny", GGUF_FILES)
    run = run_vmm("pull", "org/tiny:Q8_0", "--json")
    assert run.exit_code == 0, run.stderr
    assert set(_files(root)) == {"README.md", "tiny-Q8_0-00001-of-00002.gguf", "tiny-Q8_0-00002-of-00002.gguf"}
    assert manifests.read_manifest(root / "org--tiny").quant == "Q8_0"


def test_gguf_without_choice_exits_2_listing_quants_and_unknown_quant_exits_3(hub, root):
    hub.add_repo("org/tiny", GGUF_FILES)
    assert_error_line(run_vmm("pull", "org/tiny"), 2, "Q4_K_M", "Q8_0")
    assert_error_line(run_vmm("pull", "org/tiny:Q2_K"), 3, "Q4_K_M")
    assert hub.total_served() == 0


def test_update_fetches_only_changed_files_and_records_previous_revision(hub, root):
    first = hub.add_repo("org/tiny", BASE_FILES)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    changed = {**BASE_FILES, "model-00002-of-00002.safetensors": _rand(1_200_000, 99),
               "config.json": b'{"model_type": "llama", "v": 2}'}
    del changed["tokenizer.json"]
    second = hub.add_repo("org/tiny", changed)
    hub.reset_counters()
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    assert set(hub.bytes_served) == {"model-00002-of-00002.safetensors", "config.json"}
    doc = run.json()
    assert doc["revision"] == second and doc["previous_revision"] == first
    manifest = manifests.read_manifest(root / "org--tiny")
    assert manifest.previous_revisions == [first]
    expected = {k: v for k, v in changed.items() if k in EXPECTED or k == "config.json"}
    assert _files(root) == expected


def test_revision_by_commit_sha_and_by_flag(hub, root):
    commit = hub.add_repo("org/tiny", {"config.json": b"{}"}, revision="v1")
    hub.add_repo("org/tiny", {"config.json": b"{\"v\": 2}"})
    run = run_vmm("pull", f"org/tiny@{commit}", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["revision"] == commit
    assert (root / "org--tiny/config.json").read_bytes() == b"{}"
    assert run_vmm("pull", "org/tiny", "--revision", "v1", "--json").json()["revision"] == commit


def test_offline_succeeds_only_for_a_complete_model(hub, root, monkeypatch):
    hub.add_repo("org/tiny", BASE_FILES)
    assert_error_line(run_vmm("pull", "org/tiny", "--offline"), 4, "offline")
    assert run_vmm("pull", "org/tiny").exit_code == 0
    hub.reset_counters()
    run = run_vmm("pull", "org/tiny", "--offline", "--json")
    assert run.exit_code == 0, run.stderr
    assert hub.requests == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_vmm("pull", "org/tiny").exit_code == 0
    (root / "org--tiny" / "config.json").unlink()
    assert_error_line(run_vmm("pull", "org/tiny"), 4, "incomplete", "config.json")
    assert hub.requests == []


def test_malformed_metadata_is_a_clean_error(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    hub.metadata_override["/api/models/org/tiny/revision/main"] = b"{not json"
    assert_error_line(run_vmm("pull", "org/tiny"), 4, "malformed")


def test_unreachable_endpoint_exits_4(root, monkeypatch):
    monkeypatch.setattr("vmm.core.hub.client.METADATA_ATTEMPTS", 1)
    assert_error_line(run_vmm("pull", "org/tiny"), 4, "cannot reach the Hub")


def test_bad_chunk_size_and_workers_exit_2(hub, root):
    assert_error_line(run_vmm("pull", "org/tiny", "--chunk-size", "lots"), 2, "--chunk-size")
    assert_error_line(run_vmm("pull", "org/tiny", "--workers", "0"), 2, "--workers")


def test_hubserver_serves_the_real_hf_download_client(hub, tmp_path):
    hub.add_repo("org/tiny", BASE_FILES)
    hf = Path(sys.executable).with_name("hf")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = tmp_path / "hf-dl"
    proc = subprocess.run([str(hf), "download", "org/tiny", "--local-dir", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
           if p.is_file() and ".cache" not in p.parts}
    assert got == BASE_FILES


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_and_leaves_resumable_state(hub, root, sig):
    big = _rand(4 * 1024 * 1024, 21)
    hub.add_repo("org/tiny", {"model.safetensors": big})
    hub.faults.rate_bytes_per_s = 1024 * 1024
    env = {**os.environ, "HF_ENDPOINT": hub.url, "VMM_ROOT": str(root)}
    child = subprocess.Popen([sys.executable, "-m", "vmm", "pull", "org/tiny", "--workers", "2",
                              "--chunk-size", "256KiB"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunk_map = root / "org--tiny" / ".vmm" / "partial" / "model.safetensors.part.json"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if len(json.loads(chunk_map.read_text())["done"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    child.send_signal(sig)
    _out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")][0].startswith("error: interrupted")
    kept = json.loads(chunk_map.read_text())["done"]
    assert kept
    hub.faults.rate_bytes_per_s = None
    assert run_vmm("pull", "org/tiny").exit_code == 0
    assert (root / "org--tiny" / "model.safetensors").read_bytes() == big


def test_identical_file_in_another_model_is_linked_not_downloaded(hub, root):
    hub.add_repo("org/tiny", BASE_FILES)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    shard = "model-00001-of-00002.safetensors"
    hub.add_repo("org/other", {"config.json": b"{}", shard: BASE_FILES[shard]})
    hub.reset_counters()
    run = run_vmm("pull", "org/other", "--json")
    assert run.exit_code == 0, run.stderr
    assert hub.count(shard) == 0
    assert (root / "org--other" / shard).read_bytes() == BASE_FILES[shard]
    assert (root / "org--other" / shard).stat().st_ino == (root / "org--tiny" / shard).stat().st_ino
    assert [f.path for f in manifests.read_manifest(root / "org--other").files if f.path == shard]


def test_verified_blob_in_the_hf_cache_is_reused(hub, root, tmp_path):
    shard = "model-00001-of-00002.safetensors"
    data = BASE_FILES[shard]
    blobs = tmp_path / "hf-home" / "hub" / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (blobs / ("0" * 64)).write_bytes(b"not what the name says")
    hub.add_repo("org/tiny", BASE_FILES)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    assert hub.count(shard) == 0
    assert hub.count("model-00002-of-00002.safetensors") == len(BASE_FILES["model-00002-of-00002.safetensors"])
    assert _files(root) == EXPECTED


def test_repairing_pull_keeps_the_operators_template_and_the_hub_original(hub, root):
    files = {**BASE_FILES, "chat_template.jinja": b"{{ messages[0]['content'] }}HUB"}
    hub.add_repo("org/tiny", files)
    assert run_vmm("pull", "org/tiny").exit_code == 0
    assert run_vmm("template", "org/tiny", "--set", "chatml").exit_code == 0
    model = root / "org--tiny"
    chosen = (model / "chat_template.jinja").read_bytes()
    assert b"<|im_start|>" in chosen
    damaged = bytearray(BASE_FILES["config.json"])
    damaged[-3] ^= 0x01                                  # one byte, same size: the next pull repairs it
    (model / "config.json").write_bytes(bytes(damaged))
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["repaired"] == ["config.json"]
    assert (model / "config.json").read_bytes() == BASE_FILES["config.json"]
    assert (model / "chat_template.jinja").read_bytes() == chosen
    assert (model / ".vmm" / "chat_template.jinja.orig").read_bytes() == files["chat_template.jinja"]
    assert run.json()["chat_template"] == "chat_template.jinja"
