"""The read-only commands and rm, through the real CLI: ls, inspect, shards, rm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import builders as b
from conftest import assert_error_line, contract_keys, run_vmm, run_vmm_subprocess
from vmm.core.store import catalog, manifests

# The contract's keys, read from docs/contract.md (its one copy).
LS_MODEL_KEYS = contract_keys("ls", after="each model:")
CONFIG_KEYS = contract_keys("inspect", after="`config` holds")
INSPECT_KEYS = contract_keys("inspect") - CONFIG_KEYS
SHARDS_KEYS = contract_keys("shards")


@pytest.fixture
def zoo(root):
    """A root holding one model of every kind."""
    b.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=4,
                 tokenizer_config=b.QWEN2_TOKENIZER_CONFIG)
    b.make_model(root, "meta-llama/Meta-Llama-3-8B-Instruct", kind="pytorch",
                 cfg=b.LLAMA3_8B_INSTRUCT, shards=4)
    b.make_model(root, "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", kind="gguf", quant="Q4_K_M")
    mixed = b.make_model(root, "org/mixed", cfg=b.TINY_LLAMA)
    b.make_pytorch_model(mixed)
    b.make_hand_made_dir(root, "my-finetune")
    (root / "not-a-model.txt").write_text("stray file")
    return root


# --------------------------------------------------------------------------- ls

def test_ls_json_has_the_contract_keys_and_every_format(zoo):
    run = run_vmm("ls", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["schema_version"] == 1 and doc["root"] == str(zoo)
    by_name = {m["name"]: m for m in doc["models"]}
    for model in doc["models"]:
        assert LS_MODEL_KEYS <= set(model)
    assert {n: m["format"] for n, m in by_name.items()} == {
        "Qwen/Qwen2-7B-Instruct": "safetensors", "meta-llama/Meta-Llama-3-8B-Instruct": "pytorch",
        "TheBloke/Mistral-7B-Instruct-v0.2-GGUF": "gguf", "org/mixed": "mixed",
        "my-finetune": "safetensors"}
    qwen = by_name["Qwen/Qwen2-7B-Instruct"]
    assert (qwen["sharded"], qwen["shard_count"], qwen["managed"]) == (True, 4, True)
    assert qwen["size_bytes"] > 15_000_000_000 and qwen["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert by_name["my-finetune"]["managed"] is False and by_name["my-finetune"]["revision"] is None
    assert qwen["files"] == 7 and qwen["path"] == str(zoo / "Qwen--Qwen2-7B-Instruct")


def test_ls_ignores_hidden_directories_inside_a_model(zoo):
    d = zoo / "my-finetune"
    before = {m["name"]: m for m in run_vmm("ls", "--json").json()["models"]}["my-finetune"]
    (d / ".cache" / "huggingface").mkdir(parents=True)
    (d / ".cache" / "huggingface" / "x.metadata").write_text("x" * 1000)
    after = {m["name"]: m for m in run_vmm("ls", "--json").json()["models"]}["my-finetune"]
    assert (after["files"], after["size_bytes"]) == (before["files"], before["size_bytes"])


def test_ls_table_shows_each_model_on_one_line(zoo):
    run = run_vmm("ls")
    assert run.exit_code == 0
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "FORMAT", "SIZE"]
    row = next(line for line in lines if line.startswith("Qwen/Qwen2-7B-Instruct"))
    assert "safetensors" in row and "14.2 GiB" in row and "yes" in row
    assert next(line for line in lines if line.startswith("my-finetune")).split()[-1] == "no"


def test_ls_of_empty_or_missing_root_is_an_empty_list(tmp_path):
    for path in (tmp_path / "empty", tmp_path / "absent"):
        if path.name == "empty":
            path.mkdir()
        run = run_vmm("ls", "--json", "--root", path)
        assert run.exit_code == 0 and run.json()["models"] == []
        assert not (tmp_path / "absent").exists()
    assert run_vmm("ls", "--root", tmp_path / "absent").exit_code == 0


def test_root_option_before_or_after_the_subcommand(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("VMM_ROOT", str(tmp_path / "elsewhere"))
    before = run_vmm("--root", zoo, "ls", "--json").json()
    after = run_vmm("ls", "--root", zoo, "--json").json()
    for doc in (before, after):      # the filesystem's free bytes move with everything else on the host
        doc["totals"] = {k: v for k, v in doc["totals"].items() if "free" not in k}
    assert before == after and len(before["models"]) == 5


def _tree_state(path):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*"))


def test_ls_and_inspect_never_write_into_the_root(zoo):
    # Except usage tracking (issue 7): inspect records its use in the model's manifest.
    usage = str(zoo / "Qwen--Qwen2-7B-Instruct" / ".vmm")
    before = [e for e in _tree_state(zoo) if not e[0].startswith(usage)]
    assert run_vmm("ls").exit_code == 0
    assert run_vmm("inspect", "Qwen/Qwen2-7B-Instruct").exit_code == 0
    assert run_vmm("shards", "Qwen/Qwen2-7B-Instruct").exit_code == 0
    assert [e for e in _tree_state(zoo) if not e[0].startswith(usage)] == before
    assert manifests.read_manifest(zoo / "Qwen--Qwen2-7B-Instruct").use_counts == {"inspect": 1}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_ls_and_inspect_work_on_a_read_only_root(zoo):
    for p in [zoo, *zoo.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        assert run_vmm("ls", "--json").exit_code == 0
        assert run_vmm("inspect", "Qwen/Qwen2-7B-Instruct", "--json").exit_code == 0
    finally:
        for p in [zoo, *zoo.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_ls_lists_a_model_whose_manifest_is_corrupt_with_a_warning(zoo):
    (zoo / "Qwen--Qwen2-7B-Instruct" / ".vmm" / "manifest.json").write_text("{broken")
    run = run_vmm("ls", "--json")
    assert run.exit_code == 0
    names = [m["name"] for m in run.json()["models"]]
    assert "Qwen/Qwen2-7B-Instruct" in names
    assert "corrupt manifest" in run.stderr
    assert_error_line(run_vmm("inspect", "Qwen/Qwen2-7B-Instruct"), 5, "corrupt manifest", "manifest.json")


def test_ls_reads_no_weights(zoo, monkeypatch):
    """Weight headers are never opened by ls: the header readers are made to fail, a shard is
    corrupted, and the listing is still the one from before."""
    from vmm.core.model import formats, gguf_meta, weights

    before = run_vmm("ls", "--json").json()["models"]
    shard = zoo / "Qwen--Qwen2-7B-Instruct" / "model-00001-of-00004.safetensors"
    with open(shard, "r+b") as handle:
        handle.write(b"\xff" * 8)

    def opened(*_args, **_kw):
        raise AssertionError("ls read a weight file")

    monkeypatch.setattr(weights, "read_safetensors_header", opened)
    monkeypatch.setattr(weights, "weight_summary", opened)
    monkeypatch.setattr(gguf_meta, "read_gguf", opened)
    monkeypatch.setattr(formats, "find_gguf_files", opened)
    run = run_vmm("ls", "--json")
    assert run.exit_code == 0, run.stderr
    after = run.json()["models"]
    assert [(m["name"], m["size_bytes"], m["format"]) for m in after] == \
        [(m["name"], m["size_bytes"], m["format"]) for m in before]
    assert run_vmm("inspect", "Qwen/Qwen2-7B-Instruct").exit_code == 1     # inspect does read them


# --------------------------------------------------------------------------- inspect

def test_inspect_qwen2_json_matches_the_contract_and_the_real_model(zoo):
    run = run_vmm("inspect", "Qwen/Qwen2-7B-Instruct", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert INSPECT_KEYS <= set(doc) and set(doc["config"]) == CONFIG_KEYS
    assert doc["parameters"] == 7_615_616_512
    assert doc["weight_bytes"] == 15_231_233_024
    assert doc["kv_cache_bytes_per_token"] == 57344
    assert doc["config"]["head_dim"] is None and doc["config"]["rope_scaling"] is None
    assert doc["config"]["sliding_window"] is None          # use_sliding_window: false
    assert doc["config"]["model_max_length"] == 131072 and doc["format"] == "safetensors"


def test_inspect_by_directory_name_and_by_path_agree(zoo):
    by_id = run_vmm("inspect", "Qwen/Qwen2-7B-Instruct", "--json").json()
    by_dir = run_vmm("inspect", "Qwen--Qwen2-7B-Instruct", "--json").json()
    by_path = run_vmm("inspect", str(zoo / "Qwen--Qwen2-7B-Instruct"), "--json").json()
    assert by_id == by_dir == by_path


def test_inspect_human_output_names_parameters_and_kv_cache(zoo):
    run = run_vmm("inspect", "Qwen/Qwen2-7B-Instruct")
    assert run.exit_code == 0
    assert "7,615,616,512" in run.stdout and "57,344" in run.stdout and "Qwen2ForCausalLM" in run.stdout


def test_inspect_pytorch_takes_bytes_from_the_index_and_no_parameter_guess(zoo):
    doc = run_vmm("inspect", "meta-llama/Meta-Llama-3-8B-Instruct", "--json").json()
    assert doc["format"] == "pytorch" and doc["parameters"] is None
    assert doc["weight_bytes"] == 2 * b.LLAMA3_8B_INSTRUCT_PARAMETERS
    assert doc["kv_cache_bytes_per_token"] == 2 * 32 * 8 * 128 * 2


def test_inspect_gguf_reads_the_metadata(zoo):
    doc = run_vmm("inspect", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "--json").json()
    assert doc["format"] == "gguf" and doc["config"]["architectures"] == ["LlamaForCausalLM"]
    assert doc["config"]["quantization"]["file_type"] == "Q4_K_M"
    assert doc["parameters"] == 3 * 1024


def test_inspect_multi_quant_gguf_needs_a_quant(root):
    d = root / "bartowski--Qwen2-GGUF"
    for q in ("Q4_K_M", "Q8_0"):
        b.make_gguf_model(d, arch="qwen2", quant=q)
    assert_error_line(run_vmm("inspect", "bartowski/Qwen2-GGUF"), 2, "Q4_K_M, Q8_0")
    doc = run_vmm("inspect", "bartowski/Qwen2-GGUF:Q8_0", "--json").json()
    assert doc["config"]["quantization"]["file_type"] == "Q8_0"
    assert_error_line(run_vmm("inspect", "bartowski/Qwen2-GGUF:Q2_K"), 3, "Q2_K")


def test_inspect_unknown_format_has_nulls(root):
    d = root / "org--config-only"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(b.YI_6B))
    doc = run_vmm("inspect", "org/config-only", "--json").json()
    assert doc["format"] == "unknown" and doc["parameters"] is None and doc["weight_bytes"] is None
    assert doc["kv_cache_bytes_per_token"] == 2 * 32 * 4 * 128 * 2


def test_inspect_malformed_config_exits_5_naming_the_file(zoo):
    (zoo / "my-finetune" / "config.json").write_text("{\"hidden_size\": ")
    assert_error_line(run_vmm("inspect", "my-finetune"), 5, "malformed JSON", "config.json")


def test_inspect_truncated_shard_exits_5_naming_the_shard(zoo):
    shard = zoo / "Qwen--Qwen2-7B-Instruct" / "model-00003-of-00004.safetensors"
    os.truncate(shard, shard.stat().st_size - 1)
    assert_error_line(run_vmm("inspect", "Qwen/Qwen2-7B-Instruct"), 5, "model-00003-of-00004.safetensors")


def test_inspect_garbage_gguf_exits_5(root):
    d = root / "org--bad-GGUF"
    d.mkdir()
    (d / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + os.urandom(64))
    assert_error_line(run_vmm("inspect", "org/bad-GGUF"), 5, "model-Q4_K_M.gguf")


@pytest.mark.parametrize("name", ["../etc", "org/../x", "a/b/c", "org//name", "C:\\models\\x",
                                  "org/na\x00me", "org/name\n", ""])
def test_unsafe_names_exit_2(root, name):
    # inspect and shards also take directory paths ("./x", "../x", "/x"); rm never does.
    for command in (("rm",) if name.startswith(".") else ("inspect", "shards", "rm")):
        args = [command, name] + (["--yes"] if command == "rm" else [])
        run = run_vmm(*args)
        assert_error_line(run, 2)


def test_rm_of_a_revision_or_quant_is_refused(zoo):
    for name in ("TheBloke/Mistral-7B-Instruct-v0.2-GGUF:Q4_K_M", "Qwen/Qwen2-7B-Instruct@main"):
        assert_error_line(run_vmm("rm", name, "--yes"), 2, "whole model")
    assert (zoo / "Qwen--Qwen2-7B-Instruct").is_dir()


def test_absent_model_exits_3(root):
    for args in (["inspect", "org/absent"], ["shards", "org/absent"], ["rm", "--yes", "org/absent"],
                 ["inspect", "./no/such/dir"]):
        assert_error_line(run_vmm(*args), 3)


# --------------------------------------------------------------------------- shards

def test_shards_json_has_the_contract_keys(zoo):
    run = run_vmm("shards", "Qwen/Qwen2-7B-Instruct", "--json")
    doc = run.json()
    assert run.exit_code == 0 and SHARDS_KEYS <= set(doc)
    assert doc["index"] == "model.safetensors.index.json" and doc["shard_count"] == 4
    assert doc["missing"] == [] and doc["unindexed"] == []


def test_shards_with_a_missing_shard_prints_the_report_and_exits_5(zoo):
    d = zoo / "Qwen--Qwen2-7B-Instruct"
    (d / "model-00002-of-00004.safetensors").unlink()
    b.write_safetensors(d / "model-00005-of-00005.safetensors", {"x": ("F16", [1])})
    run = run_vmm("shards", "Qwen/Qwen2-7B-Instruct", "--json")
    assert_error_line(run, 5, "model-00002-of-00004.safetensors", "vmm pull")
    doc = run.json()
    assert doc["missing"] == ["model-00002-of-00004.safetensors"]
    assert doc["unindexed"] == ["model-00005-of-00005.safetensors"]
    table = run_vmm("shards", "Qwen/Qwen2-7B-Instruct")
    assert "MISSING" in table.stdout and "not named by" in table.stderr


def test_shards_unindexed_only_is_a_warning_not_a_failure(zoo):
    d = zoo / "Qwen--Qwen2-7B-Instruct"
    b.write_safetensors(d / "model-00005-of-00005.safetensors", {"x": ("F16", [1])})
    run = run_vmm("shards", "Qwen/Qwen2-7B-Instruct")
    assert run.exit_code == 0 and "model-00005-of-00005.safetensors" in run.stderr


def test_shards_of_unsharded_and_gguf_split(root):
    b.make_hand_made_dir(root, "single")
    assert run_vmm("shards", "single", "--json").json()["sharded"] is False
    b.make_gguf_model(root / "org--split-GGUF", split=3)
    doc = run_vmm("shards", "org/split-GGUF", "--json").json()
    assert (doc["sharded"], doc["shard_count"], doc["index"]) == (True, 3, None)


# --------------------------------------------------------------------------- rm

def test_rm_without_a_terminal_refuses_unless_yes(zoo):
    proc = run_vmm_subprocess("rm", "my-finetune", "--root", zoo)
    assert proc.returncode == 2 and "--yes" in proc.stderr and "Traceback" not in proc.stderr
    assert (zoo / "my-finetune").is_dir()


def test_rm_yes_deletes_and_reports_bytes_freed(zoo):
    d = zoo / "Qwen--Qwen2-7B-Instruct"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())     # .vmm included
    count = sum(1 for p in d.rglob("*") if p.is_file())
    run = run_vmm("rm", "Qwen/Qwen2-7B-Instruct", "--yes", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["bytes_freed"] == size > 15_000_000_000 and doc["files"] == count
    assert not (zoo / "Qwen--Qwen2-7B-Instruct").exists()
    assert not [p for p in zoo.iterdir() if ".rm-" in p.name]
    assert "Qwen/Qwen2-7B-Instruct" not in run_vmm("ls").stdout
    plain = run_vmm("rm", "-y", "my-finetune")
    assert plain.exit_code == 0 and "freed" in plain.stdout


def test_rm_never_follows_symlinks_out_of_the_root(zoo, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.symlink(outside, zoo / "my-finetune" / "link")
    assert run_vmm("rm", "my-finetune", "--yes").exit_code == 0
    assert (outside / "keep.txt").read_text() == "keep"
    os.symlink(outside, zoo / "org--linked")
    assert_error_line(run_vmm("rm", "org/linked", "--yes"), 2, "symbolic link")
    assert (outside / "keep.txt").exists()


def test_rm_refuses_while_another_process_holds_the_lock(zoo):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vmm.core.store import local, locking, manifests
        with locking.model_lock(Path({str(zoo)!r}), "my-finetune", "serve", shared=True):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_error_line(run_vmm("rm", "my-finetune", "--yes"), 8, "locked")
        from vmm.core.errors import BusyError

        with pytest.raises(BusyError):          # the core function checks under the lock itself
            catalog.delete_model_from_volume(zoo, "my-finetune")
        assert (zoo / "my-finetune").is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert run_vmm("rm", "my-finetune", "--yes").exit_code == 0


def _rm_on_a_terminal(zoo, answer: str) -> int:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "rm", "my-finetune", "--root", str(zoo)],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    time.sleep(0.1)
    os.write(master, answer.encode() + b"\n")
    try:
        proc.communicate(timeout=30)
    finally:
        os.close(master)
    return proc.returncode


def test_rm_asks_on_a_terminal(zoo):
    assert _rm_on_a_terminal(zoo, "n") == 2
    assert (zoo / "my-finetune").is_dir()
    assert _rm_on_a_terminal(zoo, "y") == 0
    assert not (zoo / "my-finetune").exists()


def test_delete_cleans_leftovers_of_an_interrupted_delete(zoo):
    leftover = zoo / ".my-finetune.rm-1-1"
    leftover.mkdir()
    (leftover / "half").write_text("x")
    assert str(leftover) not in [m.path for m in catalog.list_models(zoo)]
    catalog.delete_model_from_volume(zoo, "my-finetune")
    assert not leftover.exists()


# --------------------------------------------------------------------------- error paths

def test_unknown_option_is_one_usage_line_exit_2(root):
    assert_error_line(run_vmm("ls", "--bogus"), 2, "--bogus")


def test_unexpected_exception_is_exit_1_without_traceback_unless_debug(root, monkeypatch):
    def boom(_root, *_):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(catalog, "list_models", boom)
    assert_error_line(run_vmm("ls"), 1, "internal error", "simulated bug")
    monkeypatch.setenv("VMM_DEBUG", "1")
    with pytest.raises(RuntimeError):
        from vmm.cli import main
        main(["ls"])


def test_ctrl_c_is_exit_130(root, monkeypatch):
    def interrupted(_root, *_):
        raise KeyboardInterrupt

    monkeypatch.setattr(catalog, "list_models", interrupted)
    assert_error_line(run_vmm("ls"), 130, "interrupted")


def test_inspect_weights_without_config_show_nulls_and_a_warning(root):
    d = root / "org--weights-only"
    b.write_safetensors(d / "model.safetensors", b.llama_like_tensors(b.TINY_LLAMA))
    run = run_vmm("inspect", "org/weights-only", "--json")
    assert run.exit_code == 0 and "no config.json" in run.stderr
    doc = run.json()
    assert doc["parameters"] == b.count_parameters(b.llama_like_tensors(b.TINY_LLAMA))
    assert doc["config"]["architectures"] == [] and doc["config"]["hidden_size"] is None
    assert doc["kv_cache_bytes_per_token"] is None


def test_list_model_files_gives_sizes_and_manifest_expectations(zoo):
    model = catalog.local.load_model(zoo / "Qwen--Qwen2-7B-Instruct")
    files = {f.path: f for f in catalog.list_model_files(model)}
    assert set(files) == {"config.json", "tokenizer_config.json", "model.safetensors.index.json",
                          *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5))}
    shard = files["model-00001-of-00004.safetensors"]
    assert shard.size_bytes == shard.expected_size == (zoo / "Qwen--Qwen2-7B-Instruct" / shard.path).stat().st_size
    hand = {f.path: f for f in catalog.list_model_files(catalog.local.load_model(zoo / "my-finetune"))}
    assert hand["model.safetensors"].expected_size is None


def test_rm_and_gc_share_one_confirmation_a_no_changes_nothing(root, monkeypatch):
    import importlib
    import time

    from storage_helpers import blob, make_model

    app = importlib.import_module("vmm.cli.app")      # the module (vmm.cli.app is also the Typer app's name)
    monkeypatch.setattr(app, "stdin_is_terminal", lambda: True)
    model = make_model(root, "org/a", {"w.bin": blob("a", 1000)}, last_used=time.time() - 90 * 86400)
    for args, action in ((["rm", "org/a"], "delete"), (["gc", "--unused-for", "30d"], "remove models")):
        declined = run_vmm(*args, input="n\n")      # the prompt's newline is the terminal's echo
        assert declined.exit_code == 2, declined.stderr
        assert f"error: {action} not confirmed" in declined.stderr, declined.stderr
        assert declined.stderr.rstrip().endswith("(nothing was changed)")
        assert model.exists()
    asked = run_vmm("gc", "--unused-for", "30d", input="y\n")
    assert asked.exit_code == 0, asked.stderr
    assert "Remove 1 model(s) and 0 partial file(s)" in asked.stderr and "org/a" in asked.stderr
    assert "removed org/a" in asked.stdout and not model.exists()
