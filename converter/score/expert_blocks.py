"""Where a decoder layer's mixture of experts and its dense FFN sit among the loaded transformers modules.

Scoring hooks the modules transformers builds rather than names from a family record, so it
finds the MoE block by its shape: a child `experts` holding stacked `gate_up_proj` [experts,
2*moe_ffn, hidden] and `down_proj` [experts, hidden, moe_ffn] parameters, beside a router
`gate` (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE in transformers 5 all build it so). The layer's dense
FFN, whose down_proj input the dense act² probe sees, is a plain MLP's `down_proj` or, in an
MoE layer, the shared expert's (Qwen2-MoE's `shared_expert`); a layer with neither has none.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from converter.errors import ConvertError

FFN_PARENTS = ("mlp",)  # the layer attribute holding its FFN or MoE block
SHARED_EXPERTS = ("shared_expert",)


@dataclass(frozen=True, eq=False)
class MoeBlock:
    """One layer's experts module, with its expert count and per-expert FFN width."""

    layer: int
    experts: nn.Module
    count: int
    width: int


def _ffn_parent(layer: nn.Module) -> nn.Module | None:
    for name in FFN_PARENTS:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def moe_block(index: int, layer: nn.Module) -> MoeBlock | None:
    """The layer's experts module if the layer routes tokens to experts, else None."""
    parent = _ffn_parent(layer)
    experts = getattr(parent, "experts", None)
    if not isinstance(experts, nn.Module) or not isinstance(getattr(parent, "gate", None), nn.Module):
        return None
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if not isinstance(gate_up, nn.Parameter) or not isinstance(down, nn.Parameter) or gate_up.ndim != 3:
        return None
    if (getattr(experts, "is_transposed", False) or not getattr(experts, "is_concatenated", True)
            or getattr(experts, "has_bias", False) or not getattr(experts, "has_gate", True)):
        raise ConvertError(f"layer {index}'s experts ({type(experts).__name__}) store their weights in a layout "
                           "other than stacked [gate; up] rows without biases, which expert scoring cannot read")
    return MoeBlock(index, experts, int(gate_up.shape[0]), int(down.shape[2]))


def moe_blocks(layers: nn.ModuleList) -> tuple[MoeBlock, ...]:
    """Every MoE layer's block, in layer order; () for a dense model."""
    found = (moe_block(index, layer) for index, layer in enumerate(layers))
    return tuple(block for block in found if block is not None)


def dense_down(layer: nn.Module) -> nn.Module | None:
    """The down projection of the layer's dense FFN: the MLP's own or, in an MoE layer, the shared expert's."""
    parent = _ffn_parent(layer)
    if parent is None:
        return None
    down = getattr(parent, "down_proj", None)
    if isinstance(down, nn.Module):
        return down
    for name in SHARED_EXPERTS:
        shared_down = getattr(getattr(parent, name, None), "down_proj", None)
        if isinstance(shared_down, nn.Module):
            return shared_down
    return None
