"""vmm import: adopting model directories and Hugging Face cache entries."""

from __future__ import annotations

import os

from conftest import assert_error_line, run_vmm
from storage_helpers import COMMIT, blob, make_hf_cache_entry, make_model

from vmm.core.store import adopt, manifests
from vmm.core import hashing

FILES = {"config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
         "model.safetensors": blob("weights", 150_000), "tokenizer.json": blob("tok", 20_000)}


def test_import_of_a_plain_directory_hardlinks_and_writes_a_hashed_manifest(root, tmp_path):
    src = make_model(tmp_path / "elsewhere", "my-model", FILES, managed=False)
    run = run_vmm("import", str(src), "--name", "acme/my-model", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["name"] == "acme/my-model" and doc["files"] == 3 and doc["linked"] == 3 and doc["verified"]
    target = root / "acme--my-model"
    assert os.path.samefile(target / "model.safetensors", src / "model.safetensors")
    manifest = manifests.read_manifest(target)
    assert manifest.repo_id == "acme/my-model"
    by_path = {f.path: f for f in manifest.files}
    assert by_path["model.safetensors"].sha256 == hashing.sha256_file(src / "model.safetensors")
    # Which files were LFS on the Hub is unknown here: the content sha256 only.
    assert by_path["tokenizer.json"].sha256 == hashing.sha256_file(src / "tokenizer.json")
    assert by_path["tokenizer.json"].git_sha1 is None
    assert src.exists()                              # without --move the source stays
    listed = run_vmm("ls", "--json").json()["models"]
    assert [(m["name"], m["managed"]) for m in listed] == [("acme/my-model", True)]


def test_import_move_removes_the_source(root, tmp_path):
    src = make_model(tmp_path / "elsewhere", "org--moved", FILES, managed=False)
    run = run_vmm("import", str(src), "--move", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["name"] == "org/moved" and run.json()["moved"]
    assert not src.exists()
    assert (root / "org--moved" / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_import_of_an_hf_cache_entry_by_name_and_by_path(root, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    entry = make_hf_cache_entry(cache, "Qwen/Tiny", FILES, lfs={"model.safetensors"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    run = run_vmm("import", "Qwen/Tiny", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["kind"] == "hf-cache" and doc["commit"] == COMMIT and doc["revision"] == "main"
    target = root / "Qwen--Tiny"
    manifest = manifests.read_manifest(target)
    assert manifest.commit == COMMIT and manifest.repo_id == "Qwen/Tiny"
    # The Hub's meaning of each hash: LFS files by sha256, the others by git blob id.
    by_path = {f.path: f for f in manifest.files}
    assert by_path["model.safetensors"].sha256 and by_path["model.safetensors"].git_sha1 is None
    assert by_path["tokenizer.json"].sha256 is None
    assert by_path["tokenizer.json"].git_sha1 == hashing.git_blob_sha1_file(root / "Qwen--Tiny" / "tokenizer.json")
    checks = {c["name"]: c["status"] for c in run_vmm("check", "Qwen/Tiny", "--json", "--vllm-version", "0.10.0").json()["checks"]}
    assert checks["integrity"] == "pass", checks
    # Real files in the root (hardlinks of the blobs), never symlinks into the cache.
    weights = target / "model.safetensors"
    assert not weights.is_symlink()
    assert os.path.samefile(weights, entry / "blobs" / hashing.sha256_file(weights))
    # The same entry by path, under another name; a name already taken needs --force.
    assert_error_line(run_vmm("import", str(entry)), 2, "already in the root", "--force")
    forced = run_vmm("import", str(entry), "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    other = run_vmm("import", str(entry / "snapshots" / COMMIT), "--name", "me/tiny-copy", "--json")
    assert other.exit_code == 0, other.stderr
    assert (root / "me--tiny-copy" / "config.json").read_bytes() == FILES["config.json"]


def test_import_refuses_a_blob_that_does_not_match_its_name(root, tmp_path):
    entry = make_hf_cache_entry(tmp_path / "hf-cache", "org/damaged", FILES, lfs={"model.safetensors"})
    blob_path = (entry / "snapshots" / COMMIT / "model.safetensors").resolve()
    with open(blob_path, "r+b") as handle:
        handle.write(b"XXXX")
    run = run_vmm("import", str(entry))
    assert_error_line(run, 5, "does not match its name", "model.safetensors")
    assert not (root / "org--damaged").exists()
    assert not [p for p in root.iterdir() if p.name != ".vmm"]


def test_import_garbage_gets_clean_errors(root, tmp_path):
    assert_error_line(run_vmm("import", str(tmp_path / "nope")), 3, "no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    assert_error_line(run_vmm("import", str(empty)), 2, "not a model directory")
    broken = make_model(tmp_path / "src", "org--broken", FILES, managed=False)
    (broken / "tokenizer.model").symlink_to(tmp_path / "missing-target")
    assert_error_line(run_vmm("import", str(broken)), 5, "broken symbolic link", "tokenizer.model")
    assert_error_line(run_vmm("import", "org/not-cached"), 3, "not in the HF cache")
    unnamed = make_model(tmp_path / "src", "Some Model", FILES, managed=False)
    assert_error_line(run_vmm("import", str(unnamed)), 2, "--name")
    assert_error_line(run_vmm("import", str(broken), "--name", "../../etc"), 2)


def test_find_in_hf_cache_returns_only_verified_blobs(tmp_path):
    cache = tmp_path / "hf-cache"
    entry = make_hf_cache_entry(cache, "org/m", FILES, lfs={"model.safetensors"})
    want = []
    for rel, content in FILES.items():
        import hashlib

        want.append({"path": rel, "size": len(content),
                     "sha256": hashlib.sha256(content).hexdigest() if rel == "model.safetensors" else None,
                     "git_sha1": hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()})
    found = adopt.find_in_hf_cache("org/m", COMMIT, want, cache_dir=cache)
    assert set(found) == set(FILES)
    assert found["model.safetensors"].read_bytes() == FILES["model.safetensors"]
    # A damaged blob is not offered; for a repo not in the cache, only LFS blobs of other
    # repos, by sha256 (huggingface_hub 2.4's shared store makes such sharing the norm).
    with open(found["tokenizer.json"], "r+b") as handle:
        handle.write(b"XXXX")
    again = adopt.find_in_hf_cache("org/m", COMMIT, want, cache_dir=cache)
    assert set(again) == {"config.json", "model.safetensors"}
    assert set(adopt.find_in_hf_cache("org/other", COMMIT, want, cache_dir=cache)) == {"model.safetensors"}
    assert adopt.find_in_hf_cache("org/other", COMMIT, want, cache_dir=tmp_path / "no-cache") == {}
    assert entry.is_dir()
