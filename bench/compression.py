#!/usr/bin/env python3
"""Does compressing model files pay? Ratio and speed of zstd / gzip / lzma on weight-like data.

Data (made here, nothing downloaded):
- ``bf16 safetensors``: a real safetensors file of bf16 tensors drawn from N(0, 0.02) (the
  init scale of most LLMs; trained weights have a similar exponent spread), header included.
- ``gguf Q4_K-like``: Q4_K super-blocks (2 fp16 scales + 12 bytes of 6-bit scales + 128 bytes
  of 4-bit quants per 256 weights, 144 bytes: ggml-common.h ``block_q4_K``) with random nibbles
  and scales from N(0, 0.02) weights, as a quantizer leaves them.
- ``tokenizer.json-like``: a BPE vocab/merges JSON document of the shape tokenizers writes.

Usage: ``.venv/bin/python bench/compression.py [--mib 64]`` (zstd needs ``pip install zstandard``;
it is skipped without it). Prints a markdown table; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import struct
import sys
import time

import numpy as np


def bf16_safetensors(nbytes: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    n = nbytes // 2
    f32 = rng.normal(0.0, 0.02, n).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)     # truncation, as torch's bf16 storage
    rows = 4096
    shape = [n // rows, rows]
    header = {"__metadata__": {"format": "pt"},
              "model.layers.0.mlp.up_proj.weight": {"dtype": "BF16", "shape": shape,
                                                    "data_offsets": [0, shape[0] * rows * 2]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + bf16[: shape[0] * rows].tobytes()


def q4k_like(nbytes: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    blocks = nbytes // 144
    d = np.abs(rng.normal(0.0, 0.02, blocks)).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    dmin = np.abs(rng.normal(0.0, 0.01, blocks)).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    scales = rng.integers(0, 64, (blocks, 12), dtype=np.uint8)      # 6-bit scales, spread over 64 levels
    # 4-bit quants of Gaussian weights: a discretised bell over 0..15, two per byte.
    q = np.clip(np.round(rng.normal(7.5, 3.0, (blocks, 256))), 0, 15).astype(np.uint8)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return np.concatenate([d, dmin, scales, qs], axis=1).tobytes()


def tokenizer_json(nbytes: int, seed: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzĠ"))
    vocab, merges = {}, []
    i = 0
    while True:
        word = "".join(rng.choice(letters, rng.integers(2, 9)))
        vocab[word] = i
        if i % 2:
            cut = max(1, len(word) // 2)
            merges.append(f"{word[:cut]} {word[cut:]}")
        i += 1
        if i % 5000 == 0:
            doc = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": merges}},
                             ensure_ascii=False, indent=2).encode()
            if len(doc) >= nbytes:
                return doc[:nbytes]


def codecs():
    out = []
    try:
        import zstandard

        for level in (3, 19):
            out.append((f"zstd -{level}", lambda b, lv=level: zstandard.ZstdCompressor(level=lv, threads=-1).compress(b),
                        lambda c: zstandard.ZstdDecompressor().decompress(c)))
        # ZipNN-style: the high bytes (sign + exponent) of bf16 together, then the low bytes.
        def split(b):
            a = np.frombuffer(b[: len(b) // 2 * 2], dtype=np.uint8).reshape(-1, 2)
            return zstandard.ZstdCompressor(level=3, threads=-1).compress(a[:, 1].tobytes() + a[:, 0].tobytes() + b[len(b) // 2 * 2:])

        def unsplit(c):
            raw = zstandard.ZstdDecompressor().decompress(c)
            half = len(raw) // 2
            hi = np.frombuffer(raw[:half], dtype=np.uint8)
            lo = np.frombuffer(raw[half: 2 * half], dtype=np.uint8)
            return np.stack([lo, hi], axis=1).tobytes() + raw[2 * half:]

        out.append(("zstd -3 byte-split", split, unsplit))
    except ImportError:
        sys.stderr.write("zstandard not installed: zstd skipped (pip install zstandard)\n")
    for level in (1, 6):
        out.append((f"gzip -{level}", lambda b, lv=level: gzip.compress(b, compresslevel=lv, mtime=0), gzip.decompress))
    for preset in (0, 6):
        out.append((f"lzma -{preset}", lambda b, p=preset: lzma.compress(b, preset=p), lzma.decompress))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of each weight sample (MiB)")
    args = parser.parse_args()
    size = args.mib << 20
    samples = [("bf16 safetensors", bf16_safetensors(size)), ("gguf Q4_K-like", q4k_like(size)),
               ("tokenizer.json-like", tokenizer_json(min(size, 8 << 20)))]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {platform.python_version()}, "
          f"numpy {np.__version__}, samples {args.mib} MiB (tokenizer {len(samples[2][1]) >> 20} MiB)\n")
    print("| data | codec | ratio (orig/comp) | saved | compress MB/s | decompress MB/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, data in samples:
        for name, comp, decomp in codecs():
            # lzma -6 on 64 MiB of weights takes minutes on 2 cores: sample 8 MiB of it.
            chunk = data if not name.startswith("lzma -6") else data[: 8 << 20]
            t0 = time.perf_counter()
            packed = comp(chunk)
            t1 = time.perf_counter()
            back = decomp(packed)
            t2 = time.perf_counter()
            assert back == chunk
            ratio = len(chunk) / len(packed)
            print(f"| {label} | {name} | {ratio:.3f} | {100 * (1 - len(packed) / len(chunk)):.1f} % | "
                  f"{len(chunk) / (t1 - t0) / 1e6:.0f} | {len(chunk) / (t2 - t1) / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
