"""Formats: detection, sharding in the core API's order, headers, GGUF files and metadata."""

from __future__ import annotations

import json
import struct

import pytest

import builders as b
from vmm.core.model import formats, gguf_meta, weights
from vmm.core.model.config import config_from_gguf, kv_cache_bytes_per_token, read_model_config
from vmm.core.errors import IntegrityError, NotFoundError, UsageError


# --------------------------------------------------------------------------- detection

def test_format_is_detected_from_files_not_from_the_name(tmp_path):
    named_gguf = b.make_safetensors_model(tmp_path / "TheBloke--Llama-GGUF")
    assert formats.detect_format(named_gguf) == "safetensors"
    named_plain = tmp_path / "org--plain"
    b.make_gguf_model(named_plain)
    assert formats.detect_format(named_plain) == "gguf"
    assert formats.detect_format(b.make_pytorch_model(tmp_path / "pt")) == "pytorch"


def test_both_safetensors_and_pytorch_is_mixed_and_config_only_is_unknown(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m")
    b.make_pytorch_model(d)
    assert formats.detect_format(d) == "mixed"
    empty = tmp_path / "cfg-only"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "training_args.bin").write_bytes(b"PK")
    assert formats.detect_format(empty) == "unknown"


def test_gguf_in_a_quant_subfolder_is_found(tmp_path):
    b.make_gguf_model(tmp_path / "m" / "Q8_0", quant="Q8_0")
    assert formats.detect_format(tmp_path / "m") == "gguf"
    assert formats.get_gguf_file(tmp_path / "m").name == "model-Q8_0.gguf"


# --------------------------------------------------------------------------- sharding

def test_qwen2_7b_four_shards_sum_to_the_real_parameter_count(tmp_path):
    d = b.make_safetensors_model(tmp_path / "qwen", b.QWEN2_7B_INSTRUCT, shards=4)
    assert formats.check_model_sharding(d) == (True, 4, [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)])
    summary = weights.weight_summary(d)
    assert summary.parameters == b.QWEN2_7B_INSTRUCT_PARAMETERS == 7_615_616_512
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert summary.weight_bytes == index["metadata"]["total_size"] == 2 * 7_615_616_512
    assert kv_cache_bytes_per_token(read_model_config(d)) == 2 * 28 * 4 * 128 * 2 == 57344


def test_pytorch_index_is_looked_at_before_safetensors_index(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", shards=2)
    b.make_pytorch_model(d, shards=3)
    report = formats.shard_report(d)
    assert report.index == "pytorch_model.bin.index.json"
    assert report.shard_count == 3


def test_patterns_are_used_when_there_is_no_index(tmp_path):
    d = b.make_pytorch_model(tmp_path / "pt", shards=2, write_index=False)
    assert formats.check_model_sharding(d) == (True, 2, ["pytorch_model-00001-of-00002.bin",
                                                        "pytorch_model-00002-of-00002.bin"])
    d2 = b.make_safetensors_model(tmp_path / "st", shards=3, write_index=False)
    assert formats.shard_report(d2).index is None
    assert formats.check_model_sharding(d2)[:2] == (True, 3)
    single = b.make_safetensors_model(tmp_path / "one")
    assert formats.check_model_sharding(single) == (False, 1, ["model.safetensors"])
    assert formats.check_model_sharding(tmp_path) == (False, 0, [])


def test_index_reports_missing_and_unindexed_shards(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", shards=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    b.write_safetensors(d / "model-00009-of-00009.safetensors", {"x": ("F16", [2])})
    report = formats.shard_report(d)
    assert report.missing == ["model-00002-of-00003.safetensors"]
    assert report.unindexed == ["model-00009-of-00009.safetensors"]
    summary = weights.weight_summary(d)          # falls back to the index's total_size
    assert summary.parameters is None and summary.source == "index total_size"
    assert summary.weight_bytes == b.tensor_bytes(b.llama_like_tensors(b.TINY_LLAMA))


def test_pytorch_index_without_any_of_its_shards_does_not_hide_safetensors(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", shards=2)
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": {"a": "pytorch_model-00001-of-00002.bin"}}))
    report = formats.shard_report(d)
    assert report.index == "model.safetensors.index.json" and not report.missing


def test_stale_index_does_not_hide_a_single_file_or_gguf(tmp_path):
    stale = json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}})
    single = b.make_safetensors_model(tmp_path / "single")
    (single / "pytorch_model.bin.index.json").write_text(stale)
    assert formats.check_model_sharding(single) == (False, 1, ["model.safetensors"])
    gguf = tmp_path / "gguf"
    b.make_gguf_model(gguf)
    (gguf / "pytorch_model.bin.index.json").write_text(stale)
    assert formats.shard_report(gguf).shard_files == ["model-Q4_K_M.gguf"]
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "pytorch_model.bin.index.json").write_text(stale)
    assert formats.shard_report(nothing).missing == ["pytorch_model-00001-of-00002.bin"]


def test_malformed_or_hostile_index_is_an_integrity_error(tmp_path):
    d = b.make_safetensors_model(tmp_path / "m", shards=2)
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="model.safetensors.index.json"):
        formats.shard_report(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(IntegrityError, match="unsafe path"):
        formats.shard_report(d)


# --------------------------------------------------------------------------- safetensors headers

def _raw(path, header_len: int, body: bytes, data: int = 0):
    path.write_bytes(struct.pack("<Q", header_len) + body + b"\0" * data)
    return path


@pytest.mark.parametrize("case, why", [
    ("short", "file of 3 bytes"),
    ("absurd", "absurd"),
    ("beyond", "beyond the end"),
    ("not_json", "not JSON"),
    ("dtype", "unknown dtype"),
    ("gap", "not contiguous"),
    ("lying", "the file has"),
    ("wrong_size", "its shape needs"),
    ("trailing", "after the last tensor"),
])
def test_bad_safetensors_headers_are_refused_naming_the_file(tmp_path, case, why):
    p = tmp_path / f"{case}.safetensors"

    def hdr(doc, data=0):
        body = json.dumps(doc).encode()
        _raw(p, len(body), body, data)

    if case == "short":
        p.write_bytes(b"abc")
    elif case == "absurd":
        _raw(p, 10**12, b"{}")
    elif case == "beyond":
        _raw(p, 500, b"{}")
    elif case == "not_json":
        _raw(p, 4, b"\xff\xfe{[")
    elif case == "dtype":
        hdr({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, 1)
    elif case == "gap":
        hdr({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
             "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]}}, 3)
    elif case == "lying":
        hdr({"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}, 16)
    elif case == "wrong_size":
        hdr({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8)
    elif case == "trailing":
        hdr({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, 10)
    with pytest.raises(IntegrityError) as info:
        weights.read_safetensors_header(p)
    assert why in info.value.what and str(p) in info.value.which
    assert info.value.exit_code == 5


def test_safetensors_header_matches_what_the_reference_writer_produces(tmp_path):
    """The builder's bytes follow safetensors' layout: the header is padded to 8 bytes."""
    p = tmp_path / "x.safetensors"
    size = b.write_safetensors(p, {"w": ("BF16", [3, 5]), "b": ("F32", [3])}, metadata={"format": "pt"})
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and size == 8 + n + 3 * 5 * 2 + 3 * 4 == len(raw)
    header = weights.read_safetensors_header(p)
    assert header["__metadata__"] == {"format": "pt"}
    assert header["b"]["data_offsets"] == [30, 42]


def test_pytorch_weights_are_never_unpickled(tmp_path):
    d = b.make_pytorch_model(tmp_path / "evil")
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    summary = weights.weight_summary(d)
    assert summary.weight_bytes == (d / "pytorch_model.bin").stat().st_size
    assert summary.parameters is None
    assert not marker.exists()


def test_pytorch_weight_bytes_come_from_the_index_total_size(tmp_path):
    d = b.make_pytorch_model(tmp_path / "m", b.LLAMA3_8B_INSTRUCT, shards=4)
    assert weights.weight_summary(d).weight_bytes == 2 * b.LLAMA3_8B_INSTRUCT_PARAMETERS


# --------------------------------------------------------------------------- GGUF

def test_split_gguf_parts_are_grouped_and_summed(tmp_path):
    first = b.make_gguf_model(tmp_path, quant="Q4_K_M", split=3)
    files = formats.find_gguf_files(tmp_path)
    assert len(files) == 1 and files[0].path == first and len(files[0].parts) == 3
    assert formats.check_model_sharding(tmp_path)[:2] == (True, 3)
    summary = weights.weight_summary(tmp_path)
    assert summary.parameters == 3 * 1024 and summary.dtypes == {"Q4_K": 3 * 1024}


def test_missing_split_part_is_reported_and_refused(tmp_path):
    b.make_gguf_model(tmp_path, quant="Q4_K_M", split=3)
    (tmp_path / "model-Q4_K_M-00002-of-00003.gguf").unlink()
    assert formats.shard_report(tmp_path).missing == ["model-Q4_K_M-00002-of-00003.gguf"]
    with pytest.raises(IntegrityError, match="missing parts"):
        formats.get_gguf_file(tmp_path)


def test_several_quants_need_a_choice_and_an_absent_one_is_not_found(tmp_path):
    for q in ("Q4_K_M", "Q8_0", "F16"):
        b.make_gguf_model(tmp_path, quant=q)
    b.make_gguf_model(tmp_path, quant="F16", filename="mmproj-model-f16.gguf")
    assert [g.quant for g in formats.find_gguf_files(tmp_path)] == ["F16", "Q4_K_M", "Q8_0"]
    with pytest.raises(UsageError) as info:
        formats.get_gguf_file(tmp_path)
    assert "F16, Q4_K_M, Q8_0" in info.value.line() and info.value.exit_code == 2
    assert formats.get_gguf_file(tmp_path, "q8_0").name == "model-Q8_0.gguf"
    with pytest.raises(NotFoundError, match="Q2_K"):
        formats.get_gguf_file(tmp_path, "Q2_K")


def test_quant_comes_from_gguf_metadata_when_the_name_has_none(tmp_path):
    b.make_gguf_model(tmp_path, quant="Q8_0", filename="weights.gguf")
    assert formats.find_gguf_files(tmp_path)[0].quant == "Q8_0"


def test_gguf_metadata_maps_to_the_hf_config(tmp_path):
    path = b.make_gguf_model(tmp_path, arch="qwen2", quant="Q8_0", vocab=100, metadata={
        "context_length": 32768, "embedding_length": 3584, "block_count": 28, "head_count": 28,
        "head_count_kv": 4, "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
        "rope.scaling.original_context_length": 32768, "sliding_window": 4096},
        chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    cfg = config_from_gguf(path)
    assert (cfg.architectures, cfg.model_type) == (["Qwen2ForCausalLM"], "qwen2")
    assert (cfg.max_position_embeddings, cfg.hidden_size, cfg.num_hidden_layers) == (32768, 3584, 28)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (28, 4, 100)
    assert cfg.rope_scaling == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                "original_max_position_embeddings": 32768}
    assert cfg.sliding_window == 4096 and cfg.quantization == {"quant_method": "gguf", "file_type": "Q8_0"}
    assert kv_cache_bytes_per_token(cfg) == 57344
    template, bos, eos = gguf_meta.gguf_chat_metadata(path)
    assert template.startswith("{{ bos_token }}") and (bos, eos) == ("<t1>", "<t2>")


def test_config_of_a_gguf_only_dir_comes_from_its_metadata(tmp_path):
    b.make_gguf_model(tmp_path, arch="llama", metadata={"head_count": 32, "head_count_kv": 8,
                                                        "embedding_length": 4096, "block_count": 32})
    cfg = read_model_config(tmp_path)
    assert cfg.architectures == ["LlamaForCausalLM"] and cfg.num_key_value_heads == 8
    assert cfg.source.endswith(".gguf")


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf at all, just text" * 10,
                                     b"GGUF\x03\x00\x00\x00" + b"\xff" * 16,
                                     b"GGUF\x07\x00\x00\x00" + b"\0" * 16])
def test_garbage_gguf_is_an_integrity_error_naming_the_file(tmp_path, content):
    p = tmp_path / "model-Q4_K_M.gguf"
    p.write_bytes(content)
    with pytest.raises(IntegrityError) as info:
        config_from_gguf(p)
    assert str(p) in info.value.which


def test_truncated_gguf_is_an_integrity_error(tmp_path):
    p = b.make_gguf_model(tmp_path, quant="F16")
    raw = p.read_bytes()
    for cut in (30, len(raw) // 2, len(raw) - 1):
        p.write_bytes(raw[:cut])
        with pytest.raises(IntegrityError, match="GGUF"):
            weights.weight_summary(tmp_path)


def test_deepseek_v2_lite_uses_the_mla_kv_cache_formula(tmp_path):
    d = b.make_safetensors_model(tmp_path / "ds", b.DEEPSEEK_V2_LITE, shards=4)
    cfg = read_model_config(d)
    assert cfg.is_mla and cfg.rope_scaling["type"] == "yarn"
    assert kv_cache_bytes_per_token(cfg) == 27 * (512 + 64) * 2
    assert weights.weight_summary(d).parameters == b.count_parameters(b.llama_like_tensors(b.DEEPSEEK_V2_LITE))


def test_gguf_quant_names_from_file_names():
    assert formats.gguf_quant_of("qwen2-7b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert formats.gguf_quant_of("Model-IQ3_XXS-00001-of-00002.gguf") == "IQ3_XXS"
    assert formats.gguf_quant_of("model.bf16.gguf") == "BF16"
    assert formats.gguf_quant_of("weights.gguf") is None
    assert formats.gguf_split_of("m-00002-of-00003.gguf") == (2, 3)
