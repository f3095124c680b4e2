"""Sums of squared matmul inputs over the calibration text: the statistic of llama.cpp's importance matrix.

llama.cpp's quantiser weighs each column of a weight by the mean square of the activation that
multiplies it (its "importance matrix", made by `llama-imatrix` from `.in_sum2` sums and token
`.counts`, tools/imatrix/imatrix.cpp). Scoring already runs the model over the user's text, so
it sums the same thing for every linear layer of every decoder layer (each named by its weight's
checkpoint name) and for the output projection (`lm_head.weight`, the final normed hidden
states), over real positions only. Sums are additive: shards and ranks merge by adding them and
their token counts. The GGUF exporter maps them to llama.cpp's tensor names through the plan, the
ONNX exporter weighs its quantizer's columns by them; both cut a weight's sums through the plan
with `planned_columns`.
A mixture-of-experts layer's experts are one entry per stacked projection (`<experts>.gate_up_proj`
[experts, hidden], `<experts>.down_proj` [experts, moe_ffn]) with a row per expert and the tokens
routed to each expert (`expert_counts[<experts>]`), as llama-imatrix collects a MUL_MAT_ID: raw inputs of the
routed rows, not weighted by the router (converter.score.expert_probe hands them over); the router,
not an nn.Linear in transformers, gets its input's sums under its weight's name.
The record is plain numpy, so reading and merging scores files never imports torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from converter.errors import ConvertError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from converter.prune import PlannedTensor
    from converter.score.expert_blocks import MoeBlock

OUTPUT_NAME = "lm_head.weight"
GATE_UP, DOWN, ROUTER = "gate_up_proj", "down_proj", "gate.weight"  # under a layer's `mlp.experts` / `mlp`


def experts_path(prefix: str, layer: int) -> str:
    """The experts module of a layer, as transformers names it: the key of its per-expert token counts."""
    return f"{prefix}model.layers.{layer}.mlp.experts"


def router_name(prefix: str, layer: int) -> str:
    return f"{prefix}model.layers.{layer}.mlp.{ROUTER}"


def planned_columns(column_sums: np.ndarray, planned: PlannedTensor, name: str, where: Path) -> np.ndarray:
    """One weight's input sums, cut to the input columns the plan keeps of it (down_proj: its kept FFN
    channels; a weight that reads the uncut hidden state keeps them all). Sums over another width than
    the source weight's are a ConvertError: the scores belong to another model."""
    width = planned.source.shape[-1]
    if column_sums.shape[-1] != width:
        raise ConvertError(f"the scores' input sums for '{name}' have {column_sums.shape[-1]} columns, the weight "
                           f"{width}; the scores belong to another model", where)
    if planned.axis == 1 and planned.keep is not None:
        return column_sums[..., np.asarray(planned.keep, dtype=np.int64)]
    return column_sums


@dataclass(frozen=True)
class MatmulSums:
    """Per weight name, the sum over `tokens` positions of each input column's square (float64)."""

    sums: Mapping[str, np.ndarray] = field(compare=False)
    tokens: int
    chunk_size: int
    datasets: tuple[str, ...] = ()
    # Per experts module (experts_path): tokens routed to each expert [experts], int64; its projections'
    # sums are [experts, columns].
    expert_counts: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)

    def counts_of(self, name: str) -> np.ndarray | None:
        """Tokens per row of entry `name`: per expert for an expert projection, None for an ordinary matmul."""
        return self.expert_counts.get(name.rpartition(".")[0]) if self.sums[name].ndim == 2 else None

    def consistent(self) -> bool:
        """Every entry a vector, or an expert projection with one row per counted expert."""
        return all(v.ndim == 1 or (v.ndim == 2 and (c := self.counts_of(k)) is not None and c.shape == v.shape[:1])
                   for k, v in self.sums.items())

    def added(self, other: MatmulSums) -> MatmulSums | None:
        """The sum of two shards' statistics; None when they hold different matmuls (another model)."""
        if set(self.sums) != set(other.sums) or any(self.sums[k].shape != other.sums[k].shape for k in self.sums):
            return None
        if set(self.expert_counts) != set(other.expert_counts):
            return None
        return MatmulSums({k: self.sums[k] + other.sums[k] for k in self.sums}, self.tokens + other.tokens,
                          max(self.chunk_size, other.chunk_size), self.datasets + other.datasets,
                          {k: self.expert_counts[k] + other.expert_counts[k] for k in self.expert_counts})


class MatmulInputCollector:
    """Adds x² of every hooked linear's input (and of the output projection's) over real positions.

    q/k/v (and gate/up) read the same tensor: its column sums are computed once and reused.
    """

    def __init__(self, widths: Mapping[str, int | tuple[int, int]], masks: list[torch.Tensor], device: torch.device,
                 experts: ExpertEntries | None = None) -> None:
        """`widths`: each entry's shape (with `experts.shapes` among them for an MoE model)."""
        import torch

        self.sums = {name: torch.zeros(width, dtype=torch.float64, device=device) for name, width in widths.items()}
        experts = experts or ExpertEntries({}, {}, frozenset())
        self.counts = {path: torch.zeros(n, dtype=torch.int64, device=device) for path, n in experts.counts.items()}
        self.routers = experts.routers
        self.masks = masks
        self.device = device
        self._batch = -1
        self._weights: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _mask(self, batch: int) -> torch.Tensor:
        import torch

        if batch != self._batch or self._weights is None:
            self._weights = self.masks[batch].reshape(-1).to(device=self.device, dtype=torch.float32)
            self._batch = batch
        return self._weights

    def linear_input(self, batch: int, name: str, x: torch.Tensor) -> None:
        import torch

        if self._last is not None and self._last[0] is x:
            part = self._last[1]
        else:
            flat = x.reshape(-1, x.shape[-1]).float()
            part = (self._mask(batch) @ (flat * flat)).to(torch.float64)
            self._last = (x, part)
        self.sums[name] += part

    def output_input(self, batch: int, hidden: torch.Tensor) -> None:
        self._last = None
        self.linear_input(batch, OUTPUT_NAME, hidden)

    def routed_input(self, path: str, expert: int, x: torch.Tensor, inner: torch.Tensor) -> None:
        """One expert's routed real rows: x [rows, hidden] enters gate and up, inner [rows, moe_ffn] (the
        unweighted act_fn(gate) * up) enters down."""
        import torch

        self._last = None
        for proj, rows in ((GATE_UP, x), (DOWN, inner)):
            flat = rows.float()
            self.sums[f"{path}.{proj}"][expert] += (flat * flat).sum(dim=0).to(torch.float64)
        self.counts[path][expert] += x.shape[0]

    def router_input(self, name: str, x: torch.Tensor) -> None:
        """The router's input over real rows [rows, hidden]; ignored for a router that is a hooked nn.Linear."""
        import torch

        self._last = None
        if name in self.routers:
            flat = x.float()
            self.sums[name] += (flat * flat).sum(dim=0).to(torch.float64)

    def result(self, tokens: int, chunk_size: int, datasets: tuple[str, ...]) -> MatmulSums:
        return MatmulSums({k: v.cpu().numpy() for k, v in self.sums.items()}, tokens, chunk_size, datasets,
                          {k: v.cpu().numpy() for k, v in self.counts.items()})


@dataclass(frozen=True)
class ExpertEntries:
    """What an MoE model's experts add to the sums: each entry's shape, each experts module's expert count, and
    the routers summed from the experts' input (those that no hooked nn.Linear sees)."""

    shapes: Mapping[str, int | tuple[int, int]]
    counts: Mapping[str, int]
    routers: frozenset[str]


def expert_entries(blocks: Iterable[MoeBlock], prefix: str, hidden: int, linear: Mapping[str, int]) -> ExpertEntries:
    """The entries of every MoE layer's experts and router; empty for a dense model."""
    shapes: dict[str, int | tuple[int, int]] = {}
    counts: dict[str, int] = {}
    routers = set()
    for block in blocks:
        path = experts_path(prefix, block.layer)
        counts[path] = block.count
        shapes[f"{path}.{GATE_UP}"] = (block.count, hidden)
        shapes[f"{path}.{DOWN}"] = (block.count, block.width)
        if router_name(prefix, block.layer) not in linear:
            routers.add(router_name(prefix, block.layer))
            shapes[router_name(prefix, block.layer)] = hidden
    return ExpertEntries(shapes, counts, frozenset(routers))
