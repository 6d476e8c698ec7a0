"""Run inside vLLM's own Python: does vLLM accept the parallel layout and the speculative
config of a `vllm serve` argv vmm built? Usage: python vllm_layouts_probe.py < argvs.json

For each argv: vLLM's serve parser and argument validation (vllm_oracle_probe.parse_serve),
then EngineArgs -> ModelConfig, ParallelConfig with the argv's tensor / pipeline / data
parallel sizes and expert parallelism (its __post_init__ checks them), the model's
verify_with_parallel_config, and, with --speculative-config, SpeculativeConfig built by
EngineArgs.create_speculative_config (the MTP draft's config from the same folder).
Offline: skip_tokenizer_init, no weights.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vllm_oracle_probe import parse_serve  # noqa: E402  (sets HF_HUB_OFFLINE too)


def layout(argv: list[str]) -> dict:
    first = parse_serve(argv)
    if "error" in first:
        return first
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    subparsers = parser.add_subparsers(dest="subparser")
    ServeSubcommand().subparser_init(subparsers)
    try:
        args = parser.parse_args(argv[1:])
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        args.skip_tokenizer_init = True
        engine = EngineArgs.from_cli_args(args)
        model_config = engine.create_model_config()
        parallel = ParallelConfig(tensor_parallel_size=engine.tensor_parallel_size,
                                  pipeline_parallel_size=engine.pipeline_parallel_size,
                                  data_parallel_size=engine.data_parallel_size,
                                  enable_expert_parallel=engine.enable_expert_parallel)
        model_config.verify_with_parallel_config(parallel)
        out = {"max_model_len": model_config.max_model_len, "tensor_parallel_size": parallel.tensor_parallel_size,
               "data_parallel_size": parallel.data_parallel_size,
               "enable_expert_parallel": bool(parallel.enable_expert_parallel),
               "world_size": parallel.world_size, "speculative": None}
        if engine.speculative_config:
            spec = engine.create_speculative_config(model_config, parallel)
            out["speculative"] = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens,
                                  "draft_architectures": list(getattr(spec.draft_model_config.hf_config,
                                                                      "architectures", None) or [])
                                  if spec.draft_model_config else None}
        return out
    except SystemExit as exc:
        return {"error": f"argument parsing failed (exit {exc.code})"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


if __name__ == "__main__":
    argvs = json.load(sys.stdin)
    sys.stdout.write("\n@@ORACLE@@" + json.dumps([layout(a) for a in argvs]) + "\n")
