"""An independent, in-memory reference for what a plan does to a mixture-of-experts model's tensors.

Like tests/support/reference_prune.py it indexes fully loaded tensors with plain torch and shares no code
with the streamed rewrite, but it knows the expert tensors by name in both layouts a checkpoint may hold:
stacked (`mlp.experts.gate_up_proj` [experts, 2*moe_ffn, hidden], `mlp.experts.down_proj` [experts,
hidden, moe_ffn], as transformers 5 holds them) and one 2-D tensor per expert (`mlp.experts.{e}.gate_proj`,
Mixtral's `block_sparse_moe.experts.{e}.w1/w2/w3`, as save_pretrained writes them).
"""
from __future__ import annotations

import re

import torch

from converter.plan import PrunePlan

PER_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")
STACKED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
SHARED = re.compile(r"model\.layers\.(\d+)\.mlp\.shared_expert\.(\w+)\.weight")
DOWN = ("down_proj", "w2")


def prune_moe_state_dict(state: dict[str, torch.Tensor], plan: PrunePlan) -> dict[str, torch.Tensor]:
    tokens = torch.tensor(plan.kept_token_ids)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[tokens]
        elif m := PER_EXPERT.fullmatch(name):
            keep = torch.tensor(plan.kept_expert_channels[int(m[1])][int(m[2])])
            tensor = tensor[:, keep] if m[3] in DOWN else tensor[keep]
        elif m := STACKED.fullmatch(name):
            kept = plan.kept_expert_channels[int(m[1])]
            if m[2] == "down_proj":
                tensor = torch.stack([slab[:, torch.tensor(keep)] for slab, keep in zip(tensor, kept)])
            else:
                tensor = torch.stack([torch.cat([half[torch.tensor(keep)] for half in slab.chunk(2)])
                                      for slab, keep in zip(tensor, kept)])
        elif m := SHARED.fullmatch(name):
            keep = torch.tensor(plan.kept_ffn_channels[int(m[1])])
            tensor = tensor[:, keep] if m[2] in DOWN else tensor[keep]
        out[name] = tensor.contiguous()
    return out


def random_moe_plan(vocab: int, layers: int, experts: int, moe_ffn: int, keep_expert: int,
                    ffn: int = 0, keep_ffn: int = 0, keep_tokens: int | None = None, seed: int = 0) -> PrunePlan:
    """A random plan: each expert of each layer keeps its own `keep_expert` channels; a shared expert
    (`ffn` wide) keeps `keep_ffn` per layer; `keep_tokens` random tokens (every token when None)."""
    g = torch.Generator().manual_seed(seed)

    def pick(n: int, k: int) -> tuple[int, ...]:
        return tuple(sorted(torch.randperm(n, generator=g)[:k].tolist()))

    tokens = tuple(range(vocab)) if keep_tokens is None else pick(vocab, keep_tokens)
    shared = tuple(pick(ffn, keep_ffn) for _ in range(layers)) if ffn else ()
    kept = tuple(tuple(pick(moe_ffn, keep_expert) for _ in range(experts)) for _ in range(layers))
    return PrunePlan(tokens, shared, None, {"method": "random-test"}, kept_expert_channels=kept)
