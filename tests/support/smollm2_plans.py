"""A reproducible pruning plan for the real SmolLM2 fixture, shared by the ONNX tests, verify and bench_onnx.

Random FFN channels (seeded) and the tokens a varied corpus and a chat prompt use, so every
runtime sees a plan that drops both vocabulary and channels.
"""
from __future__ import annotations

from pathlib import Path

import torch

from converter.plan import PrunePlan
from converter.source import Source

VARIED = Path(__file__).resolve().parent.parent / "data" / "varied.txt"
KEEP_CHANNELS = 1344
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def smollm2_plan(source: Source, vocab: bool = True) -> PrunePlan:
    """Random FFN plan (seeded), plus (with `vocab`) the tokens the varied corpus and the prompt use."""
    dims = source.spec.dims
    generator = torch.Generator().manual_seed(0)
    channels = tuple(tuple(sorted(torch.randperm(dims.ffn, generator=generator)[:KEEP_CHANNELS].tolist()))
                     for _ in range(dims.layers))
    tokens: tuple[int, ...] = tuple(range(dims.vocab))
    if vocab:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(source.folder / "tokenizer.json"))
        text = VARIED.read_text(encoding="utf-8") + "\n" + PROMPT
        tokens = tuple(sorted(set(tokenizer.encode(text).ids) | {0, 1, 2}))
    return PrunePlan(tokens, channels, None, {"method": "random-test"})
