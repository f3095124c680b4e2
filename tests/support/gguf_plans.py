"""Cheap, deterministic prune plans for the real example models, cached under tests/.fixtures/.

COMPACT scoring (converter.score) of a real model takes minutes on two CPU cores, too long for a
test's first run. These plans follow the same idea at a fraction of the cost: keep the tokens
most frequent in local text (pydoc topics), and per layer the FFN channels with the largest
summed squared activation at the down_proj input over a few short texts (simple forward hooks).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch

from converter.plan import PrunePlan
from tests.support.tiny_tokenizers import corpus_lines

FIXTURES = Path(__file__).parent.parent / ".fixtures"
PLAN_VERSION = 1


def _token_ranking(folder: Path, lines: list[str], vocab: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    counts: Counter[int] = Counter()
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        counts.update(enc.ids)
    return sorted(range(vocab), key=lambda i: (-counts.get(i, 0), i))


def _channel_energy(folder: Path, lines: list[str], sequences: int = 4, length: int = 96) -> torch.Tensor:
    """Summed act² at every layer's down_proj input, [layers, intermediate]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    layers = model.model.layers
    energy = torch.zeros(len(layers), model.config.intermediate_size)

    def record(i: int):
        def hook(_module, args, _output) -> None:
            energy[i].add_(args[0].float().pow(2).sum(dim=(0, 1)))
        return hook

    hooks = [layer.mlp.down_proj.register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    text = "\n".join(lines[:400])
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    try:
        with torch.no_grad():
            for s in range(sequences):
                model.model(ids[s * length:(s + 1) * length][None])
    finally:
        for h in hooks:
            h.remove()
    return energy


def frequency_plan(folder: Path, vocab_keep: int, ffn_keep: int, name: str) -> PrunePlan:
    """The plan for `folder` (cached as FIXTURES/<name>-plan-v<N>.json)."""
    cache = FIXTURES / f"{name}-plan-v{PLAN_VERSION}.json"
    if cache.is_file():
        return PrunePlan.load(cache)
    config = json.loads((folder / "config.json").read_text())
    lines = corpus_lines()
    tokens = sorted(_token_ranking(folder, lines, config["vocab_size"])[:vocab_keep])
    energy = _channel_energy(folder, lines)
    channels = tuple(tuple(sorted(torch.topk(row, ffn_keep).indices.tolist())) for row in energy)
    plan = PrunePlan(tuple(tokens), channels, None, {"method": "frequency+act2 (tests/gguf_plans.py)"})
    FIXTURES.mkdir(exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")  # two test workers may write it at once
    plan.save(tmp)
    tmp.replace(cache)
    return plan
