"""vmm check: integrity against manifest hashes, format, config, vLLM compatibility, template."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from builders import (
    DEEPSEEK_V2_LITE,
    QWEN2_TOKENIZER_CONFIG,
    TINY_LLAMA,
    config,
    make_gguf_model,
    make_hand_made_dir,
    make_pytorch_model,
    make_safetensors_model,
)
from conftest import assert_error_line, run_vmm

from vmm.core import check, hashing
from vmm.core.serving import compat, vllm_env
from vmm.core.store import manifests

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
TOK = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": QWEN2_TOKENIZER_CONFIG["chat_template"]}


@pytest.fixture(autouse=True)
def _judge_from_snapshot(monkeypatch):
    """Judge against the bundled snapshot even where a vLLM is installed (e2e environments)."""
    monkeypatch.setattr(vllm_env, "find_vllm", lambda: None)


def manage_hashed(model_dir: Path, repo_id: str, quant: str | None = None) -> Path:
    """A manifest as `vmm pull` writes it: sha256 for LFS files, git blob sha1 for the others."""
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if not path.is_file() or rel.startswith(".vmm/"):
            continue
        data = path.read_bytes()
        entry = manifests.ManifestFile(path=rel, size=len(data),
                                   git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        if rel.endswith(LFS_SUFFIXES):
            entry.sha256 = hashlib.sha256(data).hexdigest()
        files.append(entry)
    manifests.write_manifest(model_dir, manifests.Manifest(repo_id=repo_id, revision="main", commit="0" * 40,
                                                   quant=quant, files=files, pulled_at=time.time()))
    return model_dir


def tiny_model(root: Path, repo_id: str = "acme/tiny-chat", cfg=None, **kwargs) -> Path:
    kwargs.setdefault("tokenizer_config", TOK)
    path = make_safetensors_model(root / repo_id.replace("/", "--"), cfg or TINY_LLAMA, **kwargs)
    return manage_hashed(path, repo_id)


def flip_byte(path: Path, offset: int = -1) -> None:
    with open(path, "r+b") as handle:
        size = handle.seek(0, 2)
        pos = offset if offset >= 0 else size + offset
        handle.seek(pos)
        byte = handle.read(1)
        handle.seek(pos)
        handle.write(bytes([byte[0] ^ 0xFF]))


def by_name(doc):
    return {c["name"]: c for c in doc["checks"]}


# --------------------------------------------------------------------------- integrity


def test_clean_managed_model_passes_every_check(root):
    tiny_model(root, shards=2)
    run = run_vmm("check", "acme/tiny-chat", "--json")
    assert run.exit_code == 0, (run.stdout, run.stderr)
    doc = run.json()
    assert doc["ok"] is True and doc["schema_version"] == 1
    checks = by_name(doc)
    # A plain ChatML template without `tools`: no tool-call parser, which is a warning only.
    assert [c["status"] for c in doc["checks"] if c["name"] != "tool calls"] == ["pass"] * (len(doc["checks"]) - 1)
    assert checks["tool calls"]["status"] == "warn"
    assert {"integrity", "shards", "weights", "config", "vllm", "template", "tool calls"} <= set(checks)
    assert "sizes and 5 hashes match" in checks["integrity"]["detail"]
    for entry in doc["checks"]:
        assert set(entry) == {"name", "status", "detail"}


def test_one_flipped_byte_exits_5_naming_the_file(root):
    path = tiny_model(root, shards=2)
    flip_byte(path / "model-00002-of-00002.safetensors")
    run = run_vmm("check", "acme/tiny-chat", "--json")
    assert_error_line(run, 5, "integrity", "model-00002-of-00002.safetensors", "vmm pull --verify acme/tiny-chat")
    doc = run.json()
    assert doc["ok"] is False
    integrity = by_name(doc)["integrity"]
    assert integrity["status"] == "fail" and "sha256 mismatch" in integrity["detail"]
    assert "model-00001" not in integrity["detail"]


def test_small_file_is_checked_by_git_blob_sha1(root):
    path = tiny_model(root)
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text.replace('"hidden_size": 64', '"hidden_size": 65'))
    run = run_vmm("check", "acme/tiny-chat", "--json")
    assert run.exit_code == 5
    assert "config.json (git sha1 mismatch)" in by_name(run.json())["integrity"]["detail"]


def test_fast_misses_a_same_size_flip_but_catches_a_size_change(root):
    path = tiny_model(root)
    flip_byte(path / "model.safetensors")
    assert run_vmm("check", "acme/tiny-chat", "--fast").exit_code == 0
    assert run_vmm("check", "acme/tiny-chat").exit_code == 5
    with open(path / "config.json", "a") as handle:
        handle.write("\n")
    run = run_vmm("check", "acme/tiny-chat", "--fast")
    assert_error_line(run, 5, "config.json")
    assert "size" in run.stderr


def test_missing_file_is_named(root):
    path = tiny_model(root)
    (path / "tokenizer_config.json").unlink()
    assert_error_line(run_vmm("check", "acme/tiny-chat"), 5, "tokenizer_config.json (missing)")


def test_hashing_is_parallel_and_correct_across_many_files(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    files = []
    for i in range(12):
        data = bytes([i]) * (100_000 + i)
        (model_dir / f"f{i}.safetensors").write_bytes(data)
        files.append(manifests.ManifestFile(f"f{i}.safetensors", len(data), sha256=hashlib.sha256(data).hexdigest()))
    flip_byte(model_dir / "f7.safetensors", 10)
    verdicts = check.verify_files(model_dir, manifests.Manifest("a/b", files=files), workers=4)
    assert [v.path for v in verdicts if not v.ok] == ["f7.safetensors"]
    assert all(v.hashed for v in verdicts)
    assert hashing.git_blob_sha1_file(model_dir / "f0.safetensors") == hashlib.sha1(
        b"blob 100000\0" + b"\0" * 100_000).hexdigest()


def test_hand_made_dir_warns_and_checks_headers(root):
    make_hand_made_dir(root, "my-finetune", tokenizer_config=TOK)
    run = run_vmm("check", "my-finetune", "--json")
    assert run.exit_code == 0, run.stderr
    integrity = by_name(run.json())["integrity"]
    assert integrity["status"] == "warn" and "by hand" in integrity["detail"]


def test_truncated_safetensors_fails_format_in_hand_made_dir(root):
    path = make_hand_made_dir(root, "my-finetune", tokenizer_config=TOK)
    with open(path / "model.safetensors", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 10)
    run = run_vmm("check", "my-finetune", "--json")
    assert_error_line(run, 5, "weights", "model.safetensors")


def test_missing_shard_fails(root):
    path = tiny_model(root, shards=3)
    (path / "model-00002-of-00003.safetensors").unlink()
    run = run_vmm("check", "acme/tiny-chat", "--json")
    assert run.exit_code == 5
    assert by_name(run.json())["shards"]["status"] == "fail"


# --------------------------------------------------------------------------- format warnings


def test_pickled_bin_weights_are_flagged(root):
    path = make_pytorch_model(root / "acme--pt", TINY_LLAMA, tokenizer_config=TOK)
    manage_hashed(path, "acme/pt")
    run = run_vmm("check", "acme/pt", "--json")
    assert run.exit_code == 0, run.stderr
    pickle = by_name(run.json())["pickle"]
    assert pickle["status"] == "warn" and "run arbitrary code" in pickle["detail"]


def test_gguf_dir_with_several_quants_warns_and_notes_plugin(root):
    for quant in ("Q4_K_M", "Q8_0"):
        make_gguf_model(root / "acme--tiny-GGUF", quant=quant, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    run = run_vmm("check", "acme/tiny-GGUF", "--json")
    assert run.exit_code == 0, run.stderr
    checks = by_name(run.json())
    assert checks["gguf choice"]["status"] == "warn" and "Q4_K_M" in checks["gguf choice"]["detail"]
    assert checks["weights"]["status"] == "pass" and "open with gguf's reader" in checks["weights"]["detail"]
    assert checks["vllm"]["status"] == "warn" and "vllm-gguf-plugin" in checks["vllm"]["detail"]
    chosen = by_name(run_vmm("check", "acme/tiny-GGUF:Q8_0", "--json").json())
    assert "gguf choice" not in chosen


def test_garbage_gguf_fails_format(root):
    gguf_dir = root / "acme--junk-GGUF"
    make_gguf_model(gguf_dir, quant="Q4_K_M")
    (gguf_dir / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\xff" * 200)
    run = run_vmm("check", "acme/junk-GGUF", "--json")
    assert_error_line(run, 5, "model-Q4_K_M.gguf")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("over, fragment", [
    ({"num_key_value_heads": 3}, "does not divide num_attention_heads"),
    ({"hidden_size": 66}, "does not divide hidden_size"),
    ({"num_hidden_layers": 0}, "config field num_hidden_layers is 0"),   # out of range: named before the checks
])
def test_insane_config_fails_with_exit_5(root, over, fragment):
    cfg = config(TINY_LLAMA, **over)
    path = root / "acme--insane"
    make_safetensors_model(path, cfg, tokenizer_config=TOK, tensors={"x": ("F16", [4])})
    run = run_vmm("check", str(path), "--json")
    assert run.exit_code == 5, run.stdout
    assert fragment in by_name(run.json())["config"]["detail"]


def test_explicit_head_dim_allows_heads_not_dividing_hidden(root):
    cfg = config(TINY_LLAMA, hidden_size=66, head_dim=16)
    path = root / "acme--gemma-like"
    make_safetensors_model(path, cfg, tokenizer_config=TOK, tensors={"x": ("F16", [4])})
    run = run_vmm("check", str(path), "--json")
    assert by_name(run.json())["config"]["status"] == "pass", run.stdout


# --------------------------------------------------------------------------- vLLM compatibility


def test_unsupported_architecture_exits_6_naming_arch_and_version(root):
    cfg = config(TINY_LLAMA, architectures=["StableLMEpochForCausalLM"], model_type="stablelm_epoch",
                 auto_map={"AutoModelForCausalLM": "modeling_stablelm_epoch.StableLMEpochForCausalLM"})
    tiny_model(root, "stabilityai/stablelm-3b-4e1t", cfg=cfg)
    run = run_vmm("check", "stabilityai/stablelm-3b-4e1t", "--vllm-version", "0.33.0")
    assert_error_line(run, 6, "StableLMEpochForCausalLM", "0.33.0", "0.28")
    assert "auto_map" not in run.stderr          # warnings stay in the checklist, not the error line
    assert "FAIL" in run.stdout       # the checklist is printed before the error line
    assert run_vmm("check", "stabilityai/stablelm-3b-4e1t", "--vllm-version", "0.28.0").exit_code == 0


def test_qwen1_is_incompatible_with_current_vllm(root):
    cfg = config(TINY_LLAMA, architectures=["QWenLMHeadModel"], model_type="qwen")
    tiny_model(root, "Qwen/Qwen-7B-Chat", cfg=cfg)
    assert_error_line(run_vmm("check", "Qwen/Qwen-7B-Chat"), 6, "QWenLMHeadModel", "0.34.0")
    assert run_vmm("check", "Qwen/Qwen-7B-Chat", "--vllm-version", "0.23.0").exit_code == 0


def test_bitsandbytes_fails_on_0_28_and_later(root):
    cfg = config(TINY_LLAMA, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    tiny_model(root, "unsloth/tiny-bnb-4bit", cfg=cfg)
    assert_error_line(run_vmm("check", "unsloth/tiny-bnb-4bit", "--vllm-version", "0.28.0"), 6, "bitsandbytes")
    assert run_vmm("check", "unsloth/tiny-bnb-4bit", "--vllm-version", "0.27.1").exit_code == 0


def test_auto_map_warns_about_trust_remote_code(root):
    cfg = config(TINY_LLAMA, architectures=DEEPSEEK_V2_LITE["architectures"], auto_map=DEEPSEEK_V2_LITE["auto_map"])
    tiny_model(root, "deepseek-ai/tiny-v2", cfg=cfg)
    run = run_vmm("check", "deepseek-ai/tiny-v2", "--json")
    assert run.exit_code == 0
    vllm = by_name(run.json())["vllm"]
    assert vllm["status"] == "warn" and "--trust-remote-code" in vllm["detail"]


def test_integrity_failure_wins_over_incompatibility(root):
    cfg = config(TINY_LLAMA, architectures=["QWenLMHeadModel"], model_type="qwen")
    path = tiny_model(root, "Qwen/Qwen-7B-Chat", cfg=cfg)
    flip_byte(path / "model.safetensors")
    run = run_vmm("check", "Qwen/Qwen-7B-Chat", "--json")
    assert_error_line(run, 5, "integrity")
    assert by_name(run.json())["vllm"]["status"] == "fail"


def test_bad_vllm_version_is_usage_error(root):
    tiny_model(root)
    assert_error_line(run_vmm("check", "acme/tiny-chat", "--vllm-version", "newest"), 2, "newest")


# --------------------------------------------------------------------------- template


def test_model_without_template_warns_which_family_would_apply(root):
    tiny_model(root, "mistralai/tiny-instruct", tokenizer_config=None,
               cfg=config(TINY_LLAMA, architectures=["MistralForCausalLM"], model_type="mistral"))
    run = run_vmm("check", "mistralai/tiny-instruct", "--json")
    assert run.exit_code == 0
    template = by_name(run.json())["template"]
    assert template["status"] == "warn" and "mistral" in template["detail"]


def test_bad_template_fails_check_with_exit_5(root):
    tiny_model(root, tokenizer_config={"chat_template": "{% for %}"})
    assert_error_line(run_vmm("check", "acme/tiny-chat"), 5, "template")


def test_template_set_keeps_integrity_of_the_original(root):
    path = tiny_model(root, extra_files={"chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}"})
    assert run_vmm("template", "acme/tiny-chat", "--set", "chatml").exit_code == 0
    run = run_vmm("check", "acme/tiny-chat", "--json")
    assert run.exit_code == 0, run.stdout
    assert by_name(run.json())["integrity"]["status"] == "pass"
    (path / ".vmm" / "chat_template.jinja.orig").write_text("tampered")
    assert_error_line(run_vmm("check", "acme/tiny-chat"), 5, "chat_template.jinja")


def test_check_of_unknown_model_exits_3(root):
    assert_error_line(run_vmm("check", "nobody/nothing"), 3)


def test_real_process_exit_codes_and_single_error_line(root):
    from conftest import run_vmm_subprocess

    cfg = config(TINY_LLAMA, architectures=["StableLMEpochForCausalLM"], model_type="stablelm_epoch")
    tiny_model(root, "stabilityai/stablelm-3b-4e1t", cfg=cfg)
    proc = run_vmm_subprocess("check", "stabilityai/stablelm-3b-4e1t", "--vllm-version", "0.33.0", "--json")
    assert proc.returncode == 6 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [proc.stderr.strip()]
    import json

    assert json.loads(proc.stdout)["ok"] is False
