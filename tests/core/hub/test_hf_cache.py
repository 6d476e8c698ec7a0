"""Adopting a Hugging Face cache laid out by huggingface_hub 2.4, whose Xet files live once in
a cache-wide shared blob store (``<cache>/blobs/<2hex>/<xet hash>``; each repo's
``blobs/<sha256>`` is a relative symlink to it, ``utils/_shared_blobs.py``). The layout is
made by huggingface_hub's own ``publish_blob_to_shared_store``, exactly as ``hf download``
leaves it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import assert_error_line, run_vmm

from vmm.core.store import manifests

COMMIT = "c0ffee" + "0" * 34


def _bytes(n: int, seed: str) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:n])


SHARD = _bytes(1_500_000, "shard")
FILES = {"config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
         "model.safetensors": SHARD}


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_shared_cache(cache: Path, repo_id: str, files: dict[str, bytes], lfs: set[str]) -> Path:
    """``hf download``'s layout: LFS (Xet) files published to the shared store by
    huggingface_hub itself, small files as plain blobs named by their git sha1."""
    from huggingface_hub.utils._shared_blobs import publish_blob_to_shared_store, shared_blob_path

    entry = cache / ("models--" + repo_id.replace("/", "--"))
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(COMMIT)
    for path, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if path in lfs else _git_sha1(data)
        blob = entry / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
            if path in lfs:
                xet_hash = hashlib.sha256(b"xet" + data).hexdigest()    # a Xet hash is no sha256 of the content
                assert publish_blob_to_shared_store(blob_path=str(blob), xet_hash=xet_hash, cache_dir=cache,
                                                    expected_size=len(data))
                assert blob.is_symlink() and blob.resolve() == shared_blob_path(cache, xet_hash)
        link = entry / "snapshots" / COMMIT / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return entry


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-home" / "hub"          # HF_HOME is tmp_path/hf-home (conftest)


def test_import_of_a_shared_store_cache_entry_checks_blobs_against_their_repo_names(root, tmp_path):
    make_shared_cache(_cache(tmp_path), "org/tiny", FILES, {"model.safetensors"})
    run = run_vmm("import", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    model = root / "org--tiny"
    assert {p: (model / p).read_bytes() for p in FILES} == FILES
    by_path = {f.path: f for f in manifests.read_manifest(model).files}
    assert by_path["model.safetensors"].sha256 == hashlib.sha256(SHARD).hexdigest()
    # The small file's blob name is its git sha1: the manifest keeps the Hub's meaning.
    assert by_path["config.json"].git_sha1 == _git_sha1(FILES["config.json"])
    assert by_path["config.json"].sha256 is None


def test_import_refuses_a_damaged_shared_store_blob(root, tmp_path):
    cache = _cache(tmp_path)
    entry = make_shared_cache(cache, "org/tiny", FILES, {"model.safetensors"})
    store = (entry / "blobs" / hashlib.sha256(SHARD).hexdigest()).resolve()
    os.chmod(store, 0o600)                       # the store makes its blobs read-only
    damaged = bytearray(SHARD)
    damaged[1000] ^= 0xFF
    store.write_bytes(bytes(damaged))            # same size: only the hash tells
    run = run_vmm("import", "org/tiny")
    assert_error_line(run, 5, "does not match its name (sha256)", "model.safetensors")
    assert not (root / "org--tiny").exists()


def test_pull_links_a_verified_blob_from_another_repos_shared_store_entry(hub, root, tmp_path):
    """The shard is in the cache under another repo only (a fine-tune sharing its base's
    weights): pull finds it through that repo's blobs/<sha256> link and fetches nothing."""
    make_shared_cache(_cache(tmp_path), "org/base", {"model.safetensors": SHARD}, {"model.safetensors"})
    hub.add_repo("org/tiny", FILES)
    run = run_vmm("pull", "org/tiny", "--json")
    assert run.exit_code == 0, run.stderr
    assert hub.count("model.safetensors") == 0
    assert run.json()["reused_files"] == ["model.safetensors"]
    assert (root / "org--tiny" / "model.safetensors").read_bytes() == SHARD


def test_pull_does_not_reuse_a_damaged_shared_blob(hub, root, tmp_path):
    entry = make_shared_cache(_cache(tmp_path), "org/tiny", FILES, {"model.safetensors"})
    store = (entry / "blobs" / hashlib.sha256(SHARD).hexdigest()).resolve()
    os.chmod(store, 0o600)
    store.write_bytes(bytes(len(SHARD)))
    hub.add_repo("org/tiny", FILES)
    run = run_vmm("pull", "org/tiny")
    assert run.exit_code == 0, run.stderr
    assert hub.count("model.safetensors") == len(SHARD)
    assert (root / "org--tiny" / "model.safetensors").read_bytes() == SHARD
