"""Per-expert act² over the tokens routed to each expert, from the experts module's own inputs.

The engine hands over what every MoE layer's experts module is called with: the flattened hidden
states [positions, hidden], the chosen experts [positions, top_k] and the router weights the
model applies to their outputs [positions, top_k] (after norm_topk_prob where the family sets
it, in the model's dtype: exactly the weights transformers multiplies by). For each expert that
received real (non-padding) positions, only those rows are pushed through its gate_up_proj again
and act² of act_fn(gate) * up, times the position's router weight, is added into
[layer, expert, bucket of the position's token, channel]; routed positions and their summed router
weight are counted per expert. Nothing of size experts x positions x moe_ffn is ever formed: the
largest temporary is one expert's routed rows. The recomputed gate_up matmul costs about two
thirds of the experts' forward again, the price of not reimplementing transformers' expert kernels.
The same routed rows and their unweighted act_fn(gate) * up are what llama.cpp's importance matrix sums for
the expert stacks; with a MatmulInputCollector at hand they are handed to it (and the router's input too).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from converter.errors import ConvertError
from converter.score.expert_blocks import MoeBlock
from converter.score.expert_record import ExpertSums
from converter.score.matmul_inputs import MatmulInputCollector, experts_path, router_name


class ExpertCollector:
    """Adds each expert's routed, router-weighted act² per frequency bucket, and counts its tokens."""

    def __init__(self, layers: int, blocks: Sequence[MoeBlock], buckets: int, bucket_batches: list[torch.Tensor],
                 device: torch.device, inputs: MatmulInputCollector | None = None, prefix: str = "") -> None:
        shapes = {(b.count, b.width) for b in blocks}
        if len(shapes) != 1:
            raise ConvertError(f"the MoE layers have different expert counts or widths {sorted(shapes)}; expert "
                               "scoring needs one shape for every layer")
        ((experts, width),) = shapes
        self.blocks = {b.layer: b for b in blocks}
        self.pad = buckets  # bucket id of padding positions (the dense probe's last bucket)
        self.bucket_batches = bucket_batches
        self.sums = torch.zeros(layers, experts, buckets, width, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(layers, experts, dtype=torch.int64, device=device)
        self.gate = torch.zeros(layers, experts, dtype=torch.float64, device=device)
        self.inputs = inputs  # llama.cpp's importance matrix sums, under the checkpoint names' `prefix`
        self.prefix = prefix

    def experts_input(self, batch: int, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor) -> None:
        block = self.blocks[layer]
        module: Any = block.experts  # its stacked parameters and act_fn are reached by attribute
        buckets = self.bucket_batches[batch].to(hidden.device)
        slots = top_k_index.shape[-1]
        chosen = top_k_index.reshape(-1)
        position = torch.arange(hidden.shape[0], device=hidden.device).repeat_interleave(slots)
        weight = top_k_weights.reshape(-1)
        keep = (buckets[position] != self.pad) & (chosen < block.count)
        chosen, position, weight = chosen[keep], position[keep], weight[keep]
        order = torch.argsort(chosen, stable=True)
        chosen, position, weight = chosen[order], position[order], weight[order]
        counts = torch.bincount(chosen, minlength=block.count)
        self.tokens[layer] += counts.to(self.tokens.device)
        self.gate[layer] += torch.bincount(chosen, weights=weight.double(), minlength=block.count).to(self.gate.device)
        if self.inputs is not None:
            self.inputs.router_input(router_name(self.prefix, layer), hidden[buckets != self.pad])
        sizes = counts.cpu().numpy()
        ends = np.cumsum(sizes)
        for expert in np.flatnonzero(sizes):
            rows = slice(int(ends[expert] - sizes[expert]), int(ends[expert]))
            x = hidden[position[rows]]
            gate, up = F.linear(x, module.gate_up_proj[expert]).chunk(2, dim=-1)
            act = (module.act_fn(gate) * up).float()
            if self.inputs is not None:
                self.inputs.routed_input(experts_path(self.prefix, layer), int(expert), x, act)
            part = act * act * weight[rows].float()[:, None]
            self.sums[layer, expert].index_add_(0, buckets[position[rows]], part.to(torch.float64))

    def result(self) -> ExpertSums:
        return ExpertSums(self.sums.cpu().numpy(), self.tokens.cpu().numpy(), self.gate.cpu().numpy())
