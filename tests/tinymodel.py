"""A tiny real model that vLLM can load and serve on a CPU, built in seconds, no download.

Random-weight ``LlamaForCausalLM`` (hidden 128, 2 layers, 4 heads, 2 KV heads: head size
32, which vLLM's CPU attention supports; intermediate 256; 512 positions; float32) written
as safetensors byte by byte, plus a byte-level BPE tokenizer trained here with the
``tokenizers`` library (vocab 1000, ``<s> </s> <unk> <pad>`` and the ChatML specials) and a
ChatML chat template. About 2 MB. Deterministic for a given seed. Its output is noise:
tests assert status codes, finish reasons and token counts, never text.

``build(out, chat_template=TOOLS_TEMPLATE.read_text())`` gives the same model a real published
template that handles ``tools`` (Qwen/Qwen3-0.6B's, Hermes-style ``<tool_call>`` blocks; the
verbatim file and its source are under tests/data/real_templates/, see tests/data/SOURCES.md):
the model for the tool-calling end-to-end test (4096 positions: the template's tool preamble
takes ~1000 tokens of the tiny vocabulary).

    python tests/tinymodel.py OUT_DIR [--template FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import builders  # noqa: E402

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 512, "vocab_size": 1000,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3,
    "attention_bias": False, "use_cache": True,
}
SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOLS_TEMPLATE = Path(__file__).resolve().parent / "data" / "real_templates" / "Qwen--Qwen3-0.6B.jinja"
CORPUS = (
    "The operator pulls a model, checks it, and serves it with vLLM. "
    "A character card describes who the assistant plays: a wise old wizard who speaks in riddles. "
    "Shards, indexes, headers and hashes keep every file honest. "
) * 40


def _train_tokenizer(out: Path, chat_template: str = CHATML, max_length: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["vocab_size"], special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": max_length,
        "added_tokens_decoder": added, "chat_template": chat_template, "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, indent=2))


def build(out: Path | str, seed: int = 0, tokenizer: bool = True, chat_template: str = CHATML,
          max_positions: int | None = None) -> Path:
    """Write the tiny model into ``out`` (created) and return it."""
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = builders.llama_like_tensors(CONFIG, dtype="F32")
    head, _ = builders.safetensors_header_bytes(tensors, {"format": "pt"})
    rng = np.random.default_rng(seed)
    with open(out / "model.safetensors", "wb") as handle:
        handle.write(head)
        for name, (_, shape) in tensors.items():
            if name.endswith("norm.weight"):
                data = np.ones(shape, dtype="<f4")
            else:
                data = (rng.standard_normal(shape) * 0.02).astype("<f4")
            handle.write(data.tobytes())
    config = {**CONFIG, "max_position_embeddings": max_positions or CONFIG["max_position_embeddings"]}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3, "do_sample": False}, indent=2))
    if tokenizer:
        _train_tokenizer(out, chat_template, config["max_position_embeddings"])
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--template"):
        sys.exit("usage: tinymodel.py OUT_DIR [--template FILE]")
    if len(sys.argv) == 4:     # a real template's tool preamble needs more than 512 tiny-vocab tokens
        print(build(sys.argv[1], chat_template=Path(sys.argv[3]).read_text(encoding="utf-8"), max_positions=4096))
    else:
        print(build(sys.argv[1]))
