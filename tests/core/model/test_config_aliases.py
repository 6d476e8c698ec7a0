"""transformers' attribute_map aliases, applied as its config classes apply them.

The fast tests run everywhere. ``test_every_aliased_type_reads_as_transformers_reads_it`` asks
transformers itself: it needs a Python with the transformers version the defaults table was
generated from (scripts/gen_config_defaults.py: a throwaway venv), found as this Python or
the one named by VMM_TEST_TRANSFORMERS_PYTHON, and skips cleanly without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vmm.core.model import config as config_mod, layers

STANDARD = {"hidden_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 16,
            "max_position_embeddings": 3072, "head_dim": 128, "num_key_value_heads": 4}


def _aliased_types() -> dict[str, dict[str, str]]:
    out = {}
    for model_type, entry in config_mod._defaults_table().items():
        amap = {k: v for k, v in (entry.get("attribute_map") or {}).items() if k in STANDARD}
        if amap:
            out[model_type] = amap
    return out


def _doc(model_type: str, amap: dict[str, str]) -> dict:
    """A config written with the class's own names for every aliased standard field."""
    doc = {"model_type": model_type}
    for std, stored in amap.items():
        doc.setdefault(stored, STANDARD[std])   # two standard names may share one (whisper)
    return doc


def test_the_table_holds_the_aliases_of_many_types():
    aliased = _aliased_types()
    assert len(aliased) >= 100
    assert aliased["gpt2"] == {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                               "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
    assert aliased["bloom"] == {"num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}


@pytest.mark.parametrize("model_type", sorted(_aliased_types()))
def test_aliased_names_give_the_standard_fields(model_type):
    amap = _aliased_types()[model_type]
    doc = _doc(model_type, amap)
    merged, _ = config_mod.effective_text_config(doc)
    for std, stored in amap.items():
        assert merged[std] == doc[stored], std


def test_an_aliased_name_in_the_file_wins_over_its_target():
    # GPT2Config(hidden_size=77, n_embd=1024).hidden_size == 77 (transformers 5.24 from_dict sets
    # the dataclass fields first, then the other keys through __setattr__)
    merged, _ = config_mod.effective_text_config({"model_type": "gpt2", "n_embd": 1024, "hidden_size": 77})
    assert merged["hidden_size"] == merged["n_embd"] == 77


def test_gpt2_style_config_is_not_read_as_the_class_defaults():
    cfg = config_mod.from_config_dict({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                       "n_embd": 1024, "n_layer": 24, "n_head": 16, "n_positions": 1024,
                                       "vocab_size": 50257})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1024, 24, 16)
    assert cfg.max_position_embeddings == 1024 and cfg.effective_head_dim == 64
    assert "hidden_size" not in cfg.defaults_used


def test_a_field_left_out_takes_the_aliased_class_default():
    cfg = config_mod.from_config_dict({"model_type": "gpt2", "n_embd": 1600, "n_head": 25})
    assert cfg.num_hidden_layers == 12            # GPT2Config.n_layer default
    assert "num_hidden_layers" in cfg.defaults_used


def test_custom_code_still_reads_gpt2_style_names():
    # a model type transformers does not know: vmm tries the names GPT-2-style classes alias
    cfg = config_mod.from_config_dict({"model_type": "my_custom_lm", "n_embd": 512, "n_layer": 4, "n_head": 8})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (512, 4, 8)


def test_vllms_own_config_classes_alias_too():
    # vLLM 0.32 reads chatglm with its own ChatGLMConfig (num_layers, multi_query_group_num)
    cfg = config_mod.from_config_dict({"model_type": "chatglm", "num_layers": 28, "hidden_size": 4096,
                                       "num_attention_heads": 32, "multi_query_group_num": 2, "seq_length": 8192})
    assert cfg.num_hidden_layers == 28 and cfg.effective_kv_heads == 2 and cfg.max_position_embeddings == 8192
    rw = config_mod.from_config_dict({"model_type": "RefinedWebModel", "n_layer": 32, "n_head": 71,
                                      "hidden_size": 4544, "multi_query": True})
    assert rw.num_hidden_layers == 32 and rw.effective_kv_heads == 1


@pytest.mark.parametrize("doc, kv", [
    ({"model_type": "falcon", "num_attention_heads": 71, "hidden_size": 4544, "multi_query": True}, 1),
    ({"model_type": "falcon", "num_attention_heads": 71, "hidden_size": 4544}, 1),       # class default
    ({"model_type": "falcon", "num_attention_heads": 128, "hidden_size": 8192, "num_kv_heads": 8,
      "new_decoder_architecture": True, "multi_query": True}, 8),
    ({"model_type": "falcon", "num_attention_heads": 32, "hidden_size": 4096, "multi_query": False}, 32),
    ({"model_type": "gpt_bigcode", "n_head": 48, "n_embd": 6144}, 1),
    ({"model_type": "gpt_bigcode", "n_head": 48, "n_embd": 6144, "multi_query": False}, 48),
    ({"model_type": "dbrx", "n_heads": 48, "d_model": 6144, "attn_config": {"kv_n_heads": 8}}, 8),
    ({"model_type": "mpt", "n_heads": 32, "d_model": 4096, "attn_config": {"kv_n_heads": 4}}, 4),
    ({"model_type": "mpt", "n_heads": 32, "d_model": 4096, "attn_config": {}}, 32),
    ({"model_type": "chatglm", "num_attention_heads": 32, "hidden_size": 4096, "multi_query_group_num": 2}, 2),
])
def test_kv_heads_as_vllm_counts_them(doc, kv):
    cfg = config_mod.from_config_dict(doc)
    assert cfg.effective_kv_heads == kv
    per_token = layers.layer_token_bytes(cfg)
    assert per_token == 2 * kv * cfg.effective_head_dim * 2


# --------------------------------------------------------------------------- transformers itself

_ASK = r"""
import json, logging, os, sys, warnings
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import transformers
from transformers import CONFIG_MAPPING
out = {"version": transformers.__version__, "types": {}}
for model_type, doc, keys in json.load(sys.stdin):
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict(dict(doc))
        out["types"][model_type] = {k: getattr(cfg, k) for k in keys}
    except Exception as exc:
        out["types"][model_type] = {"error": type(exc).__name__}
print(json.dumps(out, default=str))
"""


def _transformers_python() -> str | None:
    for python in (os.environ.get("VMM_TEST_TRANSFORMERS_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import transformers"], capture_output=True).returncode == 0:
            return python
    return None


def test_every_aliased_type_reads_as_transformers_reads_it():
    python = _transformers_python()
    if python is None:
        pytest.skip("no Python with transformers (set VMM_TEST_TRANSFORMERS_PYTHON to a throwaway venv's)")
    want_version = json.loads(config_mod._DEFAULTS_PATH.read_text())["transformers_version"]
    aliased = _aliased_types()
    jobs = [(t, _doc(t, amap), sorted(amap)) for t, amap in aliased.items()]
    done = subprocess.run([python, "-c", _ASK], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.splitlines()[-1])
    if theirs["version"] != want_version:
        pytest.skip(f"transformers {theirs['version']} there; the table is from {want_version}")
    checked, mismatches = 0, []
    for model_type, doc, keys in jobs:
        got = theirs["types"].get(model_type, {})
        if "error" in got:         # a class that refuses a partial config: nothing to compare
            continue
        merged, _ = config_mod.effective_text_config(doc)
        for key in keys:
            checked += 1
            if merged.get(key) != got[key]:
                mismatches.append((model_type, key, merged.get(key), got[key]))
    assert not mismatches, mismatches[:20]
    assert checked >= 200
