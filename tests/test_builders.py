"""The fixture builders make what they promise (other test files rely on them)."""

from __future__ import annotations

import json

import builders as b
from vmm.core.model import weights
from vmm.core.store import manifests


def test_gguf_split_makes_exactly_the_parts_asked(tmp_path):
    for n in (2, 3, 5):
        d = tmp_path / f"s{n}"
        first = b.make_gguf_model(d, split=n)
        assert first.name == f"model-Q4_K_M-00001-of-{n:05d}.gguf"
        assert sorted(p.name for p in d.iterdir()) == [f"model-Q4_K_M-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


def test_shards_and_index_agree(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", b.LLAMA3_8B_INSTRUCT, shards=4)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert weights.weight_summary(d).parameters == b.LLAMA3_8B_INSTRUCT_PARAMETERS
    assert sum(f.stat().st_blocks for f in d.iterdir()) * 512 < 1 << 20      # sparse


def test_make_model_manages_and_hand_made_does_not(tmp_path):
    managed = b.make_model(tmp_path, "org/m", kind="pytorch", shards=2)
    manifest = manifests.read_manifest(managed)
    assert manifest.repo_id == "org/m" and {f.path for f in manifest.files} >= {"config.json"}
    assert manifests.read_manifest(b.make_hand_made_dir(tmp_path)) is None
