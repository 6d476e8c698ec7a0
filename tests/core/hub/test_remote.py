"""Plans from the Hub: config and weight headers read by HTTP Range, never the weights."""

from __future__ import annotations

import os

import pytest

import builders as b
import fakegpu
from conftest import assert_error_line, run_vmm
from vmm.core.hub import remote
from vmm.core.model import weights
from vmm.core.serving import gpu


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """Qwen2-7B-Instruct's real config, 4 sparse shards: 15.2 GB on paper, a few MB on disk."""
    return b.make_safetensors_model(tmp_path_factory.mktemp("q") / "qwen", cfg=b.QWEN2_7B_INSTRUCT, shards=4,
                                    tokenizer_config={"model_max_length": 32768})


@pytest.fixture
def h100x2(tmp_path, monkeypatch):
    fakegpu.install(tmp_path / "bin", [(0, *fakegpu.H100[:2], 80000, "9.0"), (1, *fakegpu.H100[:2], 80000, "9.0")])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "_from_nvml", lambda: None)


def test_a_sharded_plan_reads_under_one_percent_of_the_repo_in_parallel(hub, qwen_dir):
    commit = hub.add_repo("Qwen/Qwen2-7B-Instruct", qwen_dir, fake_hashes=True)
    found = remote.read_remote_model("Qwen/Qwen2-7B-Instruct")
    local = weights.weight_summary(qwen_dir)
    assert found.commit == commit and found.fmt == "safetensors"
    assert (found.weights.weight_bytes, found.weights.parameters) == (local.weight_bytes, local.parameters)
    assert found.weights.parameters == b.QWEN2_7B_INSTRUCT_PARAMETERS
    assert found.cfg.num_key_value_heads == 4 and found.cfg.model_max_length == 32768
    served = hub.total_served()
    assert served == found.bytes_read
    assert served < found.repo_bytes / 100, (served, found.repo_bytes)
    shard_reads = [r for r in hub.requests if r.path.endswith(".safetensors")]
    assert len(shard_reads) == 4 and all(r.headers.get("Range", "").startswith("bytes=0-") for r in shard_reads)


def test_a_header_longer_than_the_first_read_takes_a_second_range(hub, tmp_path):
    tensors = {f"model.layers.{i}.mlp.weight_with_a_long_name_{'x' * 40}": ("BF16", [4, 4]) for i in range(2000)}
    d = b.make_safetensors_model(tmp_path / "m", cfg=b.TINY_LLAMA, tensors=tensors)
    hub.add_repo("org/long", d)
    found = remote.read_remote_model("org/long")
    assert found.weights.parameters == 2000 * 16
    ranges = [r.headers.get("Range") for r in hub.requests if r.path.endswith("model.safetensors")]
    assert ranges[0] == f"bytes=0-{remote.SAFETENSORS_FIRST_READ - 1}" and ranges[1].startswith("bytes=8-")


def test_gguf_plan_grows_the_range_until_the_tensor_infos_parse(hub, tmp_path, monkeypatch):
    d = tmp_path / "g"
    b.make_gguf_model(d, quant="Q4_K_M", vocab=4000)
    b.make_gguf_model(d, quant="Q8_0", vocab=4000)
    hub.add_repo("org/tiny-GGUF", d)
    monkeypatch.setattr(remote, "GGUF_FIRST_READ", 1024)      # the vocabulary alone is larger
    assert_error_line(run_vmm("serve", "org/tiny-GGUF", "--dry-run", "--gpus", "1", "--gpu-memory", "8GiB"),
                      2, "several quantizations")
    found = remote.read_remote_model("org/tiny-GGUF:Q8_0")
    assert found.fmt == "gguf" and found.quant == "Q8_0" and found.weight_files == ["model-Q8_0.gguf"]
    local = weights.weight_summary(d, "Q8_0")
    assert found.weights.weight_bytes == local.weight_bytes and found.cfg.num_hidden_layers == 2
    ranges = [r.headers["Range"] for r in hub.requests if r.path.endswith("Q8_0.gguf")]
    assert len(ranges) >= 3 and ranges[:2] == ["bytes=0-1023", "bytes=1024-4095"]   # 1 KiB, then x4
    assert [v.quant for v in found.gguf_variants] == ["Q4_K_M", "Q8_0"]


def test_serve_dry_run_plans_a_hub_model_that_is_not_in_the_root(hub, qwen_dir, root, h100x2):
    commit = hub.add_repo("Qwen/Qwen2-7B-Instruct", qwen_dir, fake_hashes=True)
    run = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    doc = run.json()
    assert doc["source"] == "hub" and doc["hub"]["commit"] == commit and doc["hub"]["revision"] == "main"
    assert doc["estimate"]["weight_bytes"] == 15231233024 and doc["max_model_len"] == 32768
    assert doc["gpu_ids"] == [0] and doc["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert doc["command"][2] == str(root / "Qwen--Qwen2-7B-Instruct")
    assert not (root / "Qwen--Qwen2-7B-Instruct").exists()          # nothing written
    text = run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--dry-run", "--gpus", "2", "--gpu-memory", "16GiB")
    assert text.exit_code == 0, text.stderr
    assert "source" in text.stdout and commit[:12] in text.stdout and "--tensor-parallel-size 2" in text.stdout


def test_revisions_and_the_token_go_where_they_should(hub, qwen_dir, tmp_path):
    hub.add_repo("org/gated", qwen_dir, gated_tokens={"hf_good"}, fake_hashes=True)
    other = hub.add_repo("org/gated", b.make_safetensors_model(tmp_path / "v2", cfg=b.LLAMA3_8B_INSTRUCT),
                         revision="v2", fake_hashes=True)
    assert_error_line(run_vmm("serve", "org/gated", "--dry-run", "--gpus", "1", "--gpu-memory", "80GiB"),
                      4, "hf auth login")
    found = remote.read_remote_model("org/gated@v2", token="hf_good")
    assert found.commit == other and found.cfg.vocab_size == 128256
    resolve = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolve and all(other in r.path for r in resolve)
    assert all(r.headers.get("Authorization") == "Bearer hf_good" for r in resolve)
    cdn = [r for r in hub.requests if r.cdn]
    assert cdn and all("Authorization" not in r.headers for r in cdn)     # LFS redirect: no token


def test_missing_repo_revision_and_offline_are_clean_errors(hub, monkeypatch):
    assert_error_line(run_vmm("serve", "org/nothing", "--dry-run"), 3, "repo not found")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_error_line(run_vmm("serve", "org/nothing", "--dry-run"), 4, "needs the network")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # Without --dry-run a model must be pulled first: the plan from the Hub is for planning.
    assert_error_line(run_vmm("serve", "org/nothing"), 3, "not in the models root", "vmm pull")


def test_a_repo_without_weights_vmm_can_size_is_exit_3(hub):
    hub.add_repo("org/empty", {"config.json": b'{"model_type": "llama"}', "README.md": b"hi"})
    assert_error_line(run_vmm("serve", "org/empty", "--dry-run", "--gpus", "1", "--gpu-memory", "8GiB"),
                      3, "no weights vmm can size")


def _gpus(tmp_path, monkeypatch, total_mib):
    fakegpu.install(tmp_path / "bin", [(0, "Tesla T4", total_mib, total_mib - 100, "7.5")])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "_from_nvml", lambda: None)


def test_pull_fit_refuses_before_any_weight_byte_with_what_would_fit(hub, qwen_dir, root, tmp_path, monkeypatch):
    hub.add_repo("Qwen/Qwen2-7B-Instruct", qwen_dir, fake_hashes=True)
    _gpus(tmp_path, monkeypatch, 15360)                     # one 15 GiB GPU: 14.2 GiB of weights + runtime do not fit
    run = run_vmm("pull", "Qwen/Qwen2-7B-Instruct", "--fit")
    assert_error_line(run, 6, "will not fit this host's GPUs", "nothing was downloaded", "2 GPUs like these")
    assert not any(root.rglob("*.safetensors")) and not any(root.rglob("*.part"))
    assert hub.total_served() < 15231233024 / 100


def test_pull_warns_when_it_will_not_fit_and_says_nothing_without_a_gpu(hub, root, tmp_path, monkeypatch):
    d = b.make_safetensors_model(tmp_path / "tiny", sparse=False)
    hub.add_repo("org/tiny", d)
    run = run_vmm("pull", "org/tiny")                        # no nvidia-smi on PATH here: no GPU, no warning
    assert run.exit_code == 0, run.stderr
    assert "will not fit" not in run.stderr
    _gpus(tmp_path, monkeypatch, 1024)                       # 1 GiB: less than vLLM's runtime alone
    run = run_vmm("pull", "org/tiny", "--root", str(tmp_path / "other"))
    assert run.exit_code == 0, run.stderr
    assert "warning: org/tiny will not fit this host's GPUs" in run.stderr
    assert (tmp_path / "other" / "org--tiny" / "model.safetensors").is_file()


def test_a_modelopt_checkpoint_on_the_hub_is_planned_with_its_hf_quant_config(hub, tmp_path):
    d = b.make_safetensors_model(tmp_path / "mo", cfg=b.LLAMA3_8B_INSTRUCT)
    (d / "hf_quant_config.json").write_text('{"producer": {"name": "modelopt"}, '
                                            '"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": null}}')
    hub.add_repo("nvidia/tiny-FP8", d, fake_hashes=True)
    model = remote.read_remote_model("nvidia/tiny-FP8")
    assert model.cfg.quantization["quant_method"] == "modelopt"
    assert model.cfg.quantization["source"] == "hf_quant_config.json"


def test_a_config_nested_too_deep_on_the_hub_is_one_error_line(hub, root, tmp_path):
    d = b.make_safetensors_model(tmp_path / "deep", cfg=b.TINY_LLAMA, sparse=False)
    (d / "config.json").write_bytes(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    hub.add_repo("org/deep", d)
    assert_error_line(run_vmm("serve", "org/deep", "--dry-run", "--gpus", "1", "--gpu-memory", "24GiB"),
                      5, "malformed JSON on the Hub", "org/deep/config.json")
