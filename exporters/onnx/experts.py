"""Mixture-of-experts layers in the traced ONNX graph: every expert computed densely, combined by router weights.

transformers 5's experts module loops over the experts that received a token and gathers their rows
(data-dependent control flow that a trace freezes at the example input), so the exporter swaps each sparse
MoE block for `DenseMoe`, written to trace into static ops with the same arithmetic: router MatMul, softmax
in fp32, TopK, the optional renormalisation of the top-k weights (read from transformers' router: its `norm_topk_prob`;
Mixtral's has no flag and always renormalises), the weights scattered into a [tokens, experts] matrix (zero for
experts not chosen), then every expert's SwiGLU FFN on all tokens, each scaled by its column and summed in
expert order (adding exact zeros, so the sum equals transformers' index_add over the chosen experts), plus
Qwen2-MoE's shared expert scaled by the sigmoid of its own gate. Every expert keeps its own 2-D MatMul
weights, so onnxruntime's fp16 converter and int8/int4 quantizers treat them as any other MatMul. It costs
compute (all experts run on every token), not memory: the graph holds each weight once. onnxruntime's
contrib `MoE` op was measured against this (tests/test_onnx_moe.py's module docstring has the numbers).

A checkpoint tensor of the experts maps to one or more of these 2-D parameters (`expert_parts`): a
per-expert tensor to its expert's projection, a stacked [experts, rows, cols] tensor to one projection per
expert and row block (gate_up_proj: gate rows then up rows), read one expert's slab at a time
(`expert_arrays`), so the stack is never in memory whole.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from converter.io.dtypes import TORCH_DTYPE_NAMES, raw_to_torch
from converter.prune import PlannedTensor, PrunedCheckpoint

ROUTER_ROLE = "ffn_gate_inp"
# Checkpoint roles of the experts' tensors -> the projections they hold, in row-block order.
EXPERT_PROJECTIONS = {"ffn_gate_exp": ("gate_proj",), "ffn_up_exp": ("up_proj",), "ffn_down_exp": ("down_proj",),
                      "ffn_gate_up_exps": ("gate_proj", "up_proj"), "ffn_down_exps": ("down_proj",)}
MLP = "model.layers.{layer}.mlp"


class ExpertMlp(nn.Module):
    """One expert's SwiGLU FFN as three Linear layers (turned into MatMuls by exporters.onnx.model)."""

    def __init__(self, hidden: int, width: int, act: nn.Module) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False, device="meta")
        self.up_proj = nn.Linear(hidden, width, bias=False, device="meta")
        self.down_proj = nn.Linear(width, hidden, bias=False, device="meta")
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DenseMoe(nn.Module):
    """A sparse MoE block (router, experts, optional shared expert) as static ops: all experts on all tokens."""

    def __init__(self, block: Any) -> None:
        super().__init__()
        experts = block.experts
        self.top_k = int(block.gate.top_k)
        # What transformers' router does: its `norm_topk_prob` flag; Mixtral's router has none and always renormalises.
        self.normalise = bool(getattr(block.gate, "norm_topk_prob", True))
        self.gate = nn.Linear(experts.hidden_dim, experts.num_experts, bias=False, device="meta")
        self.experts = nn.ModuleList(ExpertMlp(experts.hidden_dim, experts.intermediate_dim, experts.act_fn)
                                     for _ in range(experts.num_experts))
        self.shared_expert = getattr(block, "shared_expert", None)
        self.shared_expert_gate = getattr(block, "shared_expert_gate", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        if self.normalise:
            top = top / top.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(1, index, top).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * weights[:, e:e + 1]
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(hidden.shape)


def densify_moe_blocks(model: nn.Module) -> None:
    """Swap every decoder layer's sparse MoE block (an `mlp` with `experts` and a router `gate`) for DenseMoe."""
    for layer in model.model.layers:  # type: ignore[union-attr]
        block = getattr(layer, "mlp", None)
        if block is not None and hasattr(block, "experts") and hasattr(block, "gate"):
            layer.mlp = DenseMoe(block)


@dataclass(frozen=True)
class ExpertPart:
    """One 2-D model parameter fed by an expert checkpoint tensor: `expert` is its slab of a stacked tensor
    (None for a 2-D tensor) and `block` its row block out of `blocks` (gate_up_proj: gate 0, up 1)."""

    param: str
    expert: int | None = None
    block: int = 0
    blocks: int = 1


def expert_parts(pruned: PrunedCheckpoint, planned: PlannedTensor) -> tuple[ExpertPart, ...] | None:
    """The DenseMoe parameters a router or expert tensor feeds; None for any other tensor."""
    slot = pruned.spec.slot(planned.name)
    if slot is None or slot.layer is None:
        return None
    mlp = MLP.format(layer=slot.layer)
    if slot.role == ROUTER_ROLE:
        return (ExpertPart(f"{mlp}.gate.weight"),)
    projections = EXPERT_PROJECTIONS.get(slot.role)
    if projections is None:
        return None
    if len(planned.shape) == 3:
        return tuple(ExpertPart(f"{mlp}.experts.{e}.{p}.weight", e, i, len(projections))
                     for e in range(planned.shape[0]) for i, p in enumerate(projections))
    return (ExpertPart(f"{mlp}.experts.{slot.expert}.{projections[0]}.weight"),)


def part_shape(planned: PlannedTensor, part: ExpertPart) -> tuple[int, ...]:
    """The [out, in] shape of the parameter `part` of `planned` (transformers' Linear layout)."""
    if part.expert is None:
        return planned.shape
    return (planned.shape[1] // part.blocks, planned.shape[2])


def _slabs(pruned: PrunedCheckpoint, planned: PlannedTensor) -> Iterator[np.ndarray]:
    if planned.experts_keep is not None:
        yield from pruned.expert_slabs(planned)
        return
    src = planned.source
    for expert in range(planned.shape[0]):
        yield pruned.source.raw_rows(src.name, [expert]).reshape(*src.shape[1:], src.itemsize)


def _as_float32(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A fresh slab's bytes as float32, without raw_to_torch's defensive copy (one slab less in memory)."""
    if not raw.flags.writeable or not raw.flags.c_contiguous:
        return raw_to_torch(raw, dtype, shape).to(torch.float32)
    return torch.from_numpy(raw.reshape(-1)).view(getattr(torch, TORCH_DTYPE_NAMES[dtype])).reshape(shape).to(
        torch.float32)


def expert_arrays(pruned: PrunedCheckpoint, planned: PlannedTensor,
                  parts: tuple[ExpertPart, ...]) -> Iterator[tuple[ExpertPart, torch.Tensor]]:
    """Each part's float32 [out, in] weight, a stacked tensor read one expert's slab at a time."""
    if len(planned.shape) != 3:
        yield parts[0], raw_to_torch(pruned.read(planned), planned.dtype, planned.shape).to(torch.float32)
        return
    by_expert: dict[int, list[ExpertPart]] = {}
    for part in parts:
        by_expert.setdefault(part.expert or 0, []).append(part)
    for expert, slab in enumerate(_slabs(pruned, planned)):
        value = _as_float32(slab, planned.dtype, planned.shape[1:])
        for part in by_expert[expert]:
            rows = value.shape[0] // part.blocks
            yield part, value[part.block * rows:(part.block + 1) * rows]
        del value, slab
