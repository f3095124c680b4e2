"""LongRoPE rotary tables for the traced graph: the short/long frequency switch as a graph op.

transformers' LongRoPE (Phi-3) divides the rotary frequencies by `short_factor` while the largest
position of the current call is below `original_max_position_embeddings` and by `long_factor`
from there on, updating the rotary module's `inv_freq` buffer in place before it computes cos/sin.
A traced graph must not freeze that choice at the example length nor mutate a buffer, so
`LongRopeTables` holds both frequency sets and selects between them with `torch.where` on
max(position_ids) + 1, exactly transformers' rule, then computes cos/sin as its rotary module
does (scaled by the attention factor). Past keys keep the rotation they were cached with, in
both: a decode that crosses the original length switches only the new tokens, as transformers does.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

LONGROPE = "longrope"


class LongRopeTables(nn.Module):
    """(x, position_ids) -> (cos, sin) with the short or long LongRoPE frequencies, chosen in the graph."""

    short_freq: torch.Tensor
    long_freq: torch.Tensor

    def __init__(self, rotary: Any, config: Any) -> None:
        super().__init__()
        params = config.rope_parameters
        self.original = int(params["original_max_position_embeddings"])
        init: Any = ROPE_INIT_FUNCTIONS[LONGROPE]
        long_freq, _ = init(config, None, seq_len=self.original + 1)
        self.register_buffer("short_freq", rotary.original_inv_freq.detach().clone().float(), persistent=False)
        self.register_buffer("long_freq", long_freq.detach().clone().float(), persistent=False)
        self.scaling = float(rotary.attention_scaling)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        longest = position_ids.max() + 1
        inv_freq = torch.where(longest > self.original, self.long_freq, self.short_freq)
        freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(x.dtype), (emb.sin() * self.scaling).to(x.dtype)


def is_longrope(config: Any) -> bool:
    params = getattr(config, "rope_parameters", None)
    return isinstance(params, dict) and params.get("rope_type") == LONGROPE
