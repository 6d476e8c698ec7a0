"""Extract tests/data/recipes.json from a checkout of github.com/vllm-project/recipes.

    python scripts/gen_recipes_data.py GIT_DIR [COMMIT]

GIT_DIR is a (bare) clone of vllm-project/recipes. For each model below (those with a
published config.json under tests/data/real_configs), it records from ``models/<id>.yaml``:
the context length, parameter count and precision of the default variant, the single-node
layouts the recipe allows on the hardware its guide names (``compatible_strategies``:
``single_node_tp`` = TP over every GPU, ``single_node_tep`` = TP + ``--enable-expert-parallel``,
``single_node_dep`` = ``--data-parallel-size`` over every GPU + EP, as ``strategies/*.yaml``
define them; ``base_args`` with ``--enable-expert-parallel`` make TP an EP layout too;
``strategy_overrides``/variant ``tp`` pin a TP size) and the speculative-decoding feature's
``--speculative-config``. The hardware per model is what the recipe's guide text names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# model id -> (our config file, hardware the recipe's guide names, the guide's words for it)
MODELS = {
    "openai/gpt-oss-120b": ("openai--gpt-oss-120b.json", ["1xA100-80GB", "2xH100", "4xH100", "8xH100", "8xH200"],
                            "guide: 'fits on 1xA100 80GB, scales to TP 2/4/8'; H100/H200 verified"),
    "Qwen/Qwen3-Next-80B-A3B-Instruct": ("Qwen--Qwen3-Next-80B-A3B-Thinking.json", ["4xH200", "4xA100-80GB"],
                                         "guide: 'Launch on 4x H200/H20 or 4x A100/A800 GPUs' (config: the "
                                         "Thinking sibling, same architecture)"),
    "deepseek-ai/DeepSeek-V3": ("deepseek-ai--DeepSeek-V3.json", ["8xH200"], "guide: '8xH200 / 8xMI300X (FP8)'"),
    "deepseek-ai/DeepSeek-V3.1": ("deepseek-ai--DeepSeek-V3.1.json", ["8xH200", "8xH20"],
                                  "variant: 'Native FP8 weights on 8xH200 (or H20)'"),
    "deepseek-ai/DeepSeek-V3.2": ("haoyangli-amd--DeepSeek-V3.2-exp-ptpc.json", ["8xH200", "8xH20"],
                                  "guide: 'Minimum 8x H100/H200 80GB GPUs' and its DeepGEMM note 'on H20 GPUs' "
                                  "(config: a V3.2-Exp checkpoint, same architecture)"),
    "Qwen/Qwen3-32B": ("Qwen--Qwen3-32B.json", ["2xH100"], "guide: 'Single node (BF16, TP=2)'"),
    "meta-llama/Llama-3.1-8B-Instruct": ("meta-llama--Llama-3.1-8B-Instruct.json", ["1xH100"],
                                         "guide: '--tensor-parallel-size 1'"),
    "zai-org/GLM-4.7": ("zai-org--GLM-4.7-FP8.json", ["4xH200"],
                        "guide: 'Tensor Parallel + MTP (FP8 on 4xH200)' (the fp8 variant zai-org/GLM-4.7-FP8)"),
}
BYTES = {"bf16": 2.0, "fp8": 1.0, "mxfp4": 4.25 / 8, "nvfp4": 4.5 / 8, "int4": 0.5}


def _show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def _layouts(doc: dict, n: int, variant: str) -> list[dict]:
    strategies = doc.get("compatible_strategies") or []
    base_ep = "--enable-expert-parallel" in (doc["model"].get("base_args") or [])
    pinned = (doc.get("strategy_overrides") or {}).get("single_node_tp", {}).get("tp") \
        or doc["variants"].get(variant, {}).get("tp")
    out = []
    if "single_node_tp" in strategies or n == 1:
        tp = min(n, pinned) if isinstance(pinned, int) else n
        out.append({"tp": tp, "dp": 1, "ep": base_ep and tp > 1})
    if n > 1 and "single_node_tep" in strategies:
        out.append({"tp": n, "dp": 1, "ep": True})
    if n > 1 and "single_node_dep" in strategies:
        out.append({"tp": 1, "dp": n, "ep": True})
    return [dict(t) for t in {tuple(sorted(d.items())) for d in out}]


def main(git_dir: str, commit: str = "HEAD") -> None:
    import yaml

    full = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", commit], check=True,
                          capture_output=True, text=True).stdout.strip()
    entries = []
    for model_id, (config, hardware, said) in MODELS.items():
        path = f"models/{model_id}.yaml"
        doc = yaml.safe_load(_show(git_dir, full, path))
        variant = "fp8" if model_id == "zai-org/GLM-4.7" else "default"
        precision = doc["variants"][variant]["precision"]
        spec = (doc.get("features") or {}).get("spec_decoding", {}).get("args") or []
        speculative = None
        if "--speculative-config" in spec:
            speculative = json.loads(spec[spec.index("--speculative-config") + 1])
        elif "--speculative-config.method" in spec:
            speculative = {"method": spec[spec.index("--speculative-config.method") + 1],
                           "num_speculative_tokens": int(spec[spec.index("--speculative-config.num_speculative_tokens") + 1])}
        for gpus in hardware:
            n = int(gpus.split("x")[0])
            entries.append({
                "model": doc["variants"][variant].get("model_id", model_id), "config": config, "gpus": gpus,
                "context_length": doc["model"]["context_length"],
                "parameter_count": doc["model"]["parameter_count"], "precision": precision,
                "weight_bytes_estimate": int(float(doc["model"]["parameter_count"].rstrip("B")) * 1e9 * BYTES[precision]),
                "layouts": sorted(_layouts(doc, n, variant), key=lambda d: (d["tp"], d["dp"], d["ep"])),
                "speculative": speculative, "hardware_source": said,
                "recipe": {"repo": "vllm-project/recipes", "commit": full, "path": path},
            })
    out = Path(__file__).resolve().parent.parent / "tests" / "data" / "recipes.json"
    out.write_text(json.dumps({"source": "github.com/vllm-project/recipes", "commit": full,
                               "entries": entries}, indent=1) + "\n")
    print(f"{len(entries)} entries -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
