"""Numbers out of range in a config are one `error:` line naming the field (exit 5), everywhere
a config is read: inspect, check, serve --dry-run, and configs read from the Hub by Range."""

from __future__ import annotations

import pytest

import builders as b
from conftest import assert_error_line, run_vmm
from vmm.core.errors import IntegrityError
from vmm.core.model import config as config_mod

TENSORS = {"model.embed_tokens.weight": ("BF16", [256, 64])}   # not derived from the bad config
BAD = [
    ("hidden_size", 10 ** 30, "1000000000000000000000000000000"),
    ("num_hidden_layers", -2, "-2"),
    ("num_attention_heads", True, "true"),
    ("hidden_size", 64.5, "64.5"),
    ("max_position_embeddings", 10 ** 30, "1000000000000000000000000000000"),
    ("num_key_value_heads", 0, "0"),
    ("vocab_size", "32000", "'32000'"),
    ("sliding_window", -1, "-1"),
]


@pytest.mark.parametrize("field, value, shown", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_every_command_names_the_field(root, field, value, shown):
    cfg = {**b.TINY_LLAMA, field: value}
    b.make_model(root, "org/bad", cfg=cfg, tensors=TENSORS)
    for argv in (["inspect", "org/bad"], ["inspect", "org/bad", "--json"], ["check", "org/bad"],
                 ["serve", "org/bad", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB"]):
        assert_error_line(run_vmm(*argv), 5, f"config field {field} is {shown}", "config.json")


@pytest.mark.parametrize("doc, field", [
    ({"model_type": "llama", "text_config": {"hidden_size": -4}}, "hidden_size"),
    ({"model_type": "gpt2", "n_embd": 10 ** 30}, "hidden_size"),           # an alias is the field
    ({"model_type": "dbrx", "attn_config": {"kv_n_heads": 10 ** 30}}, "num_key_value_heads"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": -8}}, "rope_scaling.factor"),
    ({"model_type": "nemotron_h", "ssm_state_size": 2 ** 40}, "ssm_state_size"),
    ({"model_type": "falcon_h1", "mamba_expand": 0}, "mamba_expand"),
])
def test_nested_aliased_and_state_fields_are_checked(doc, field):
    with pytest.raises(IntegrityError, match=f"config field {field} is"):
        config_mod.from_config_dict(doc, where="x/config.json")


def test_null_and_auto_are_not_numbers_out_of_range():
    cfg = config_mod.from_config_dict({**b.TINY_LLAMA, "sliding_window": None, "head_dim": None})
    assert cfg.sliding_window is None and cfg.effective_head_dim == 16
    config_mod.from_config_dict({"model_type": "granitemoehybrid", "mamba_d_head": "auto"})


def test_a_tokenizer_without_a_limit_is_not_an_error(root):
    # transformers writes 1e30 (VERY_LARGE_INTEGER) as the tokenizer's "no limit"
    b.make_model(root, "org/nolimit", cfg=b.TINY_LLAMA, tokenizer_config={"model_max_length": 10 ** 30})
    run = run_vmm("inspect", "org/nolimit", "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["config"]["model_max_length"] is None


def test_a_config_out_of_range_on_the_hub_is_one_error_line(hub, root, tmp_path):
    d = b.make_safetensors_model(tmp_path / "huge", cfg={**b.TINY_LLAMA, "num_hidden_layers": 10 ** 30}, tensors=TENSORS)
    hub.add_repo("org/huge", d)
    assert_error_line(run_vmm("serve", "org/huge", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB"),
                      5, "config field num_hidden_layers is 1000000000000000000000000000000", "org/huge/config.json")
