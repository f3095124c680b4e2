"""An independent, in-memory reference for what a plan does to a model's tensors.

It works on a fully loaded state dict with plain torch indexing, sharing no code with the
streaming path, so tests can compare the two bit for bit.
"""
from __future__ import annotations

import torch

from converter.plan import PrunePlan


def prune_state_dict(state: dict[str, torch.Tensor], plan: PrunePlan) -> dict[str, torch.Tensor]:
    tokens = torch.tensor(plan.kept_token_ids)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[tokens]
        elif ".mlp." in name:
            layer = int(name.split(".")[2])
            channels = torch.tensor(plan.kept_ffn_channels[layer])
            if "gate_up_proj" in name:  # gate rows then up rows, the same channels kept in each
                gate, up = tensor.chunk(2)
                tensor = torch.cat([gate[channels], up[channels]])
            else:
                tensor = tensor[:, channels] if "down_proj" in name else tensor[channels]
        out[name] = tensor.contiguous()
    return out


def random_plan(vocab: int, ffn: int, layers: int, keep_tokens: int | None, keep_channels: int,
                seed: int = 0) -> PrunePlan:
    """A plan keeping a random subset (every token when keep_tokens is None)."""
    g = torch.Generator().manual_seed(seed)
    tokens = range(vocab) if keep_tokens is None else sorted(torch.randperm(vocab, generator=g)[:keep_tokens].tolist())
    channels = [sorted(torch.randperm(ffn, generator=g)[:keep_channels].tolist()) for _ in range(layers)]
    return PrunePlan(tuple(tokens), tuple(tuple(c) for c in channels), None, {"method": "random-test"})
