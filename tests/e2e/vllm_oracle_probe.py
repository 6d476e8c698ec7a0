"""Run inside vLLM's own Python: vLLM's ModelConfig/ParallelConfig verdicts on config.json files.

Usage: python vllm_oracle_probe.py CONFIG.json ...   (a JSON object by file name), or
       python vllm_oracle_probe.py --kv < cases.json  (KV bytes one sequence reserves).
Used by test_vllm_oracle.py; offline: skip_tokenizer_init, no weights, no network.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
TPS = (1, 2, 4, 8)


def probe(path: str) -> dict:
    from vllm.config import ModelConfig, ParallelConfig

    folder = tempfile.mkdtemp(prefix="vmm-oracle-")
    try:
        shutil.copy(path, os.path.join(folder, "config.json"))
        mc = ModelConfig(model=folder, skip_tokenizer_init=True)
        out = {"head_size": mc.get_head_size(), "num_layers": mc.get_num_layers(ParallelConfig()),
               "max_model_len": mc.max_model_len, "use_mla": bool(mc.use_mla),
               "sliding_window": mc.get_sliding_window(),
               "layer_types": getattr(mc.hf_text_config, "layer_types", None),
               "is_hybrid": bool(mc.is_hybrid), "attention_free": bool(mc.is_attention_free),
               "layers_by_block_type": {}, "mamba_state": None,
               "kv_heads": {}, "tp_ok": {}}
        for block_type in ("attention", "mamba", "linear_attention"):
            try:
                out["layers_by_block_type"][block_type] = mc.get_num_layers_by_block_type(ParallelConfig(), block_type)
            except Exception as exc:  # noqa: BLE001 - vLLM's words are the result
                out["layers_by_block_type"][block_type] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if mc.is_hybrid or mc.is_attention_free:
            out["mamba_state"] = mamba_state(mc)
        for tp in TPS:
            pc = ParallelConfig(tensor_parallel_size=tp)
            out["kv_heads"][str(tp)] = mc.get_num_kv_heads(pc)
            try:
                mc.verify_with_parallel_config(pc)
                out["tp_ok"][str(tp)] = True
            except Exception as exc:  # vLLM raises ValueError; keep its words
                out["tp_ok"][str(tp)] = str(exc)[:200]
        return out
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def mamba_state(mc) -> dict:
    """The model class's own ``get_mamba_state_shape_from_config`` / ``..._dtype_from_config``
    at TP 1, 2 and 4 (the class is imported, not built: no weights, no device)."""
    import types

    from vllm.model_executor.models import ModelRegistry

    try:
        model_cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, model_config=mc)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if not hasattr(model_cls, "get_mamba_state_shape_from_config"):
        return {"error": "no get_mamba_state_shape_from_config"}
    cache = types.SimpleNamespace(mamba_cache_dtype="auto", mamba_ssm_cache_dtype="auto", use_replayssm=False,
                                  cache_dtype="auto")
    try:   # NemotronH: SSM state in float32 unless the config says otherwise
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP

        hook = MODELS_CONFIG_MAP.get(mc.architecture)
        if hook is not None and hasattr(hook, "update_mamba_ssm_cache_dtype"):
            hook.update_mamba_ssm_cache_dtype(cache_config=cache, hf_config=mc.hf_config)
    except ImportError:
        pass
    out = {"shapes": {}, "dtypes": None}
    for tp in (1, 2, 4):
        vc = types.SimpleNamespace(parallel_config=types.SimpleNamespace(tensor_parallel_size=tp),
                                   model_config=mc, cache_config=cache, num_speculative_tokens=0, speculative_config=None,
                                   mamba_config=types.SimpleNamespace(backend=None))
        try:
            out["shapes"][str(tp)] = [list(s) for s in model_cls.get_mamba_state_shape_from_config(vc)]
            out["dtypes"] = [str(d).removeprefix("torch.") for d in model_cls.get_mamba_state_dtype_from_config(vc)]
        except Exception as exc:  # noqa: BLE001 - e.g. a TP that does not divide the heads
            out["shapes"][str(tp)] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def kv_bytes(case: dict) -> int:
    """What vLLM's hybrid KV cache manager reserves for one sequence: its own grouping
    (vllm/v1/core/kv_cache_utils.py) and specs (vllm/v1/kv_cache_interface.py)."""
    import types

    import torch
    from vllm.v1.core import kv_cache_utils as utils
    from vllm.v1.kv_cache_interface import (ChunkedLocalAttentionSpec, FullAttentionSpec, MambaSpec,
                                            SlidingWindowSpec)
    from vllm.v1.kv_cache_layout import KVCacheLayout

    block = case.get("block", 16)
    common = {"block_size": block, "num_kv_heads": case["kv_heads"], "head_size": case["head_size"],
              "dtype": torch.bfloat16}
    def spec(kind: str):
        if kind in ("mamba", "linear"):
            # a state layer: its shapes/dtypes (checked against the model class elsewhere),
            # padded to the attention page as vllm/platforms/interface.py _align_hybrid_block_size does
            state = case["states"][kind]
            return MambaSpec(block_size=block, shapes=tuple(tuple(s) for s in state["shapes"]),
                             dtypes=tuple(getattr(torch, d) for d in state["dtypes"]),
                             page_size_padded=case.get("padded"), mamba_cache_mode="align")
        if kind == "sliding":
            return SlidingWindowSpec(**common, sliding_window=case["window"])
        if kind == "chunked":
            return ChunkedLocalAttentionSpec(**common, attention_chunk_size=case["chunk"])
        return FullAttentionSpec(**common)

    specs = {f"layers.{i}": spec(kind) for i, kind in enumerate(case["kinds"])}
    cache = types.SimpleNamespace(get_resolved_kv_cache_layout=lambda: KVCacheLayout.LBHNC, mamba_cache_mode="align")
    vllm_config = types.SimpleNamespace(
        max_in_flight_tokens=case["in_flight"], cache_config=cache,
        model_config=types.SimpleNamespace(max_model_len=case["length"]),
        parallel_config=types.SimpleNamespace(decode_context_parallel_size=1, tensor_parallel_size=1),
        scheduler_config=types.SimpleNamespace(disable_hybrid_kv_cache_manager=False))
    try:   # vLLM 0.34 moved the planning into kv_cache_planning and groups by its public entry
        from vllm.v1.core import kv_cache_planning as planning
    except ImportError:
        planning = None
    if planning is not None:
        # 0.34's _max_memory_usage_bytes_from_groups asks the platform's placement builder for
        # the bytes of a block; the default placement's is _pool_bytes_per_block, used here.
        from vllm.v1.kv_cache_interface import UniformTypeKVCacheSpecs

        vllm_config.attention_config = types.SimpleNamespace(hisparse_config=None)
        groups = planning.get_kv_cache_groups(vllm_config, specs)
        blocks = sum(g.kv_cache_spec.max_memory_usage_pages(vllm_config)
                     if isinstance(g.kv_cache_spec, UniformTypeKVCacheSpecs)
                     else -(-g.kv_cache_spec.max_memory_usage_bytes(vllm_config) // g.kv_cache_spec.page_size_bytes)
                     for g in groups)
        return planning._pool_bytes_per_block(vllm_config, groups) * blocks
    if len({type(spec) for spec in specs.values()}) > 1:
        groups = utils._get_kv_cache_groups_uniform_page_size(specs)
    else:
        groups = utils._get_kv_cache_groups_uniform_spec(specs)
    return utils._max_memory_usage_bytes_from_groups(vllm_config, groups)


def parse_serve(argv: list[str]) -> dict:
    """vLLM's own `vllm serve` parser and validation on a command vmm built, then the
    ModelConfig/ParallelConfig those arguments give (no tokenizer, no weights loaded)."""
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    try:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    except ImportError:   # vLLM 0.34
        from vllm.entrypoints.common.cli_args import validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        parser = FlexibleArgumentParser()
        subparsers = parser.add_subparsers(dest="subparser")
        # vLLM 0.34's parser builds a DeviceConfig: a CUDA build on a host without a GPU fails
        # here ("Failed to infer device type"), reported per command below
        ServeSubcommand().subparser_init(subparsers)
        args = parser.parse_args(argv[1:])          # argv[0] is "vllm"
        validate_parsed_serve_args(args)
        if getattr(args, "model_tag", None) is not None:   # what ServeSubcommand.cmd does
            args.model = args.model_tag
        args.skip_tokenizer_init = True
        engine = EngineArgs.from_cli_args(args)
        model_config = engine.create_model_config()
        parallel = ParallelConfig(tensor_parallel_size=engine.tensor_parallel_size,
                                  pipeline_parallel_size=engine.pipeline_parallel_size)
        model_config.verify_with_parallel_config(parallel)
        return {"max_model_len": model_config.max_model_len}
    except SystemExit as exc:
        return {"error": f"argument parsing failed (exit {exc.code})"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def main() -> None:
    if sys.argv[1:] == ["--argv"]:
        argvs = json.load(sys.stdin)
        sys.stdout.write("\n@@ORACLE@@" + json.dumps([parse_serve(a) for a in argvs]) + "\n")
        return
    if sys.argv[1:] == ["--kv"]:
        cases = json.load(sys.stdin)
        sys.stdout.write("\n@@ORACLE@@" + json.dumps([kv_bytes(case) for case in cases]) + "\n")
        return
    results = {os.path.basename(p): probe(p) for p in sys.argv[1:]}
    sys.stdout.write("\n@@ORACLE@@" + json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
