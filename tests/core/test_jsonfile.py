"""JSON from model folders and the Hub: nesting depth bounded, one error line naming the file."""

from __future__ import annotations

import json

import pytest
from builders import QWEN2_7B_INSTRUCT, TINY_LLAMA, make_model
from conftest import assert_error_line, run_vmm

from vmm.core import jsonfile
from vmm.core.errors import IntegrityError

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("text, depth", [
    (b"1", 0), (b"[]", 1), (b"[[],[[]]]", 3), (b'{"a": [1, {"b": 2}]}', 3),
    (b'{"a": "[[[[\\"[[[{{{"}', 1),           # brackets and escaped quotes inside strings
    (b'["\\\\", ["x"]]', 2),                   # an escaped backslash ends before the quote
])
def test_depth_counts_only_brackets_outside_strings(text, depth):
    assert jsonfile.nesting_depth(text) == depth
    json.loads(text)


def test_limit_is_inclusive_and_deeper_is_refused():
    assert jsonfile.loads(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(jsonfile.JsonDepthError, match="deeper than 64"):
        jsonfile.loads(b"[" * 65 + b"]" * 65)
    with pytest.raises(ValueError):
        jsonfile.loads(DEEP)
    with pytest.raises(ValueError):
        jsonfile.loads(b"{not json")


def test_big_but_shallow_documents_parse_unchanged():
    doc = {"model_type": "llama", "merges": [["a b", "c]]d"] for _ in range(20_000)],
           "vocab": {f"tok{i}": i for i in range(20_000)}, "nested": {"a": {"b": {"c": [1, [2, [3]]]}}}}
    assert jsonfile.loads(json.dumps(doc)) == doc
    assert jsonfile.loads(json.dumps(doc).encode()) == doc


def test_load_file_names_the_file_for_every_kind_of_bad(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_bytes(DEEP)
    with pytest.raises(IntegrityError, match="deeper than 64") as caught:
        jsonfile.load_file(deep)
    assert caught.value.which == str(deep) and caught.value.exit_code == 5
    with pytest.raises(IntegrityError, match="cannot read"):
        jsonfile.load_file(tmp_path / "missing.json")


@pytest.mark.parametrize("command", ["inspect", "check"])
def test_config_nested_100000_levels_is_one_error_line_exit_5(root, command):
    path = make_model(root, "acme/deep", cfg=TINY_LLAMA)
    (path / "config.json").write_bytes(b'{"model_type": "llama", "x": ' + DEEP + b"}")
    run = run_vmm(command, "acme/deep")
    assert_error_line(run, 5, "config.json")
    assert "RecursionError" not in run.stderr


def test_deep_shard_index_and_tokenizer_config_are_refused(root):
    path = make_model(root, "acme/deepidx", cfg=QWEN2_7B_INSTRUCT, shards=2)
    index = path / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    index.write_text(json.dumps(doc)[:-1] + ', "x": ' + DEEP.decode() + "}")
    assert_error_line(run_vmm("inspect", "acme/deepidx"), 5, "model.safetensors.index.json")
    tok = make_model(root, "acme/deeptok", cfg=TINY_LLAMA)
    (tok / "tokenizer_config.json").write_bytes(b'{"chat_template": ' + DEEP + b"}")
    assert_error_line(run_vmm("template", "acme/deeptok"), 5, "tokenizer_config.json")


def test_big_legal_config_is_still_fine(root):
    cfg = dict(TINY_LLAMA, id2label={str(i): f"L{i}" for i in range(50_000)},
               rope_scaling={"type": "yarn", "factor": 4.0, "nested": {"a": [[[[1]]]]}})
    make_model(root, "acme/big", cfg=cfg)
    run = run_vmm("inspect", "acme/big", "--json")
    assert run.exit_code == 0, run.stderr
