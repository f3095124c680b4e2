"""Simulating a plan's per-expert channel cut on scoring's ModelRunner, without building the pruned model.

Dropping channel c of an expert removes row c of its gate and up projections and column c of its
down projection; the dropped channel's activation then reaches nothing, which is exactly what
zeroing column c of the expert's down projection does (as dense candidates zero the input of
down_proj: converter.score.bpb.MaskProbe). transformers' experts modules hold every expert's
down projection in one stacked `down_proj` parameter [experts, hidden, moe_ffn], so while the
mask is on, a pre-hook on each experts module swaps in that parameter times a [experts, 1,
moe_ffn] 0/1 mask and a post-hook puts the original back: one elementwise product per layer and
batch, whole or layer by layer (the hook runs after a layer's weights are loaded). Every expert
keeps its own channels, so this also checks that the per-expert lists reach the right experts.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from converter.errors import ConvertError
from converter.score.engine import ModelRunner

ExpertChannels = Sequence[Sequence[Sequence[int]]]


def expert_masks(runner: ModelRunner, kept: ExpertChannels) -> dict[int, torch.Tensor]:
    """Per MoE layer of the runner, the [experts, 1, moe_ffn] 0/1 mask of the kept channels."""
    masks = {}
    for block in runner.moe:
        if block.layer >= len(kept) or len(kept[block.layer]) != block.count:
            raise ConvertError(f"the plan lists no channels for each of layer {block.layer}'s {block.count} experts")
        mask = torch.zeros(block.count, 1, block.width, device=runner.device, dtype=runner.dtype)
        for expert, channels in enumerate(kept[block.layer]):
            mask[expert, 0, torch.as_tensor(list(channels), dtype=torch.long)] = 1
        masks[block.layer] = mask
    return masks


@contextmanager
def masked_experts(runner: ModelRunner, kept: ExpertChannels | None) -> Iterator[None]:
    """While inside, the runner's experts compute as if only `kept` channels existed (no-op for None/())."""
    if not kept or not runner.moe:
        yield
        return
    masks = expert_masks(runner, kept)
    saved: dict[int, nn.Parameter] = {}

    def before(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            original = module._parameters["down_proj"]
            if original is None:
                return
            saved[layer] = original
            module._parameters["down_proj"] = nn.Parameter(original * masks[layer].to(original.dtype),
                                                          requires_grad=False)
        return hook

    def after(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if layer in saved:
                module._parameters["down_proj"] = saved.pop(layer)
        return hook

    handles = []
    try:
        for block in runner.moe:
            handles.append(block.experts.register_forward_pre_hook(before(block.layer), with_kwargs=True))
            handles.append(block.experts.register_forward_hook(after(block.layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in runner.moe:  # a forward that raised between the two hooks
            if block.layer in saved:
                block.experts._parameters["down_proj"] = saved.pop(block.layer)
