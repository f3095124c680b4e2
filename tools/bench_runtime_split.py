"""Vocabulary-only and FFN-only halves of a plan, to show which cut buys which part of the speed-up.

llama.cpp's binding exposes no per-operator timing, so the decode time is broken down by shape
instead: the same plan's kept tokens with every FFN channel, and every token with the plan's kept
channels, exported and timed next to the dense model and the full plan. The two plans are written
directly from the full plan (the tokenizer rules already ran on its token set).
"""
from __future__ import annotations

import json
from pathlib import Path

from tools.bench_runtime_build import Variant


def breakdown_variants(src: Path, work: Path, full: Variant) -> list[tuple[str, Variant]]:
    """[("vocab-only", ...), ("ffn-only", ...)] for the plan of `full`."""
    from converter.source import open_source
    from converter.score.budget import param_model

    source = open_source(src)
    dims = source.spec.dims
    model = param_model(source)
    plan = json.loads(full.plan.read_text(encoding="utf-8"))
    every_channel = [list(range(dims.ffn)) for _ in range(dims.layers)]
    halves = {"vocab-only": (plan["kept_token_ids"], every_channel),
              "ffn-only": (list(range(dims.vocab)), plan["kept_ffn_channels"])}
    out = []
    for kind, (tokens, channels) in halves.items():
        path = full.plan.with_name(f"plan-{full.name}-{kind}.json")
        if not path.is_file():
            data = dict(plan, kept_token_ids=tokens, kept_ffn_channels=channels,
                        metadata={**plan.get("metadata", {}), "derived": f"{kind} half of {full.plan.name}"})
            path.write_text(json.dumps(data), encoding="utf-8")
        vocab, ffn = len(tokens), len(channels[0])
        out.append((kind, Variant(full.model, full.ratio, path, vocab, ffn, model.params(vocab, ffn),
                                  full.dense_params, f"{full.name}-{kind}")))
    return out
