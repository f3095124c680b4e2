"""Sums of squared matmul inputs over the calibration text: the statistic of llama.cpp's importance matrix.

llama.cpp's quantiser weighs each column of a weight by the mean square of the activation that
multiplies it (its "importance matrix", made by `llama-imatrix` from `.in_sum2` sums and token
`.counts`, tools/imatrix/imatrix.cpp). Scoring already runs the model over the user's text, so
it sums the same thing for every linear layer of every decoder layer (each named by its weight's
checkpoint name) and for the output projection (`lm_head.weight`, the final normed hidden
states), over real positions only. Sums are additive: shards and ranks merge by adding them and
their token counts. The GGUF exporter maps them to llama.cpp's tensor names through the plan.
The record is plain numpy, so reading and merging scores files never imports torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

OUTPUT_NAME = "lm_head.weight"


@dataclass(frozen=True)
class MatmulSums:
    """Per weight name, the sum over `tokens` positions of each input column's square (float64)."""

    sums: Mapping[str, np.ndarray] = field(compare=False)
    tokens: int
    chunk_size: int
    datasets: tuple[str, ...] = ()

    def added(self, other: MatmulSums) -> MatmulSums | None:
        """The sum of two shards' statistics; None when they hold different matmuls (another model)."""
        if set(self.sums) != set(other.sums) or any(self.sums[k].shape != other.sums[k].shape for k in self.sums):
            return None
        return MatmulSums({k: self.sums[k] + other.sums[k] for k in self.sums}, self.tokens + other.tokens,
                          max(self.chunk_size, other.chunk_size), self.datasets + other.datasets)


class MatmulInputCollector:
    """Adds x² of every hooked linear's input (and of the output projection's) over real positions.

    q/k/v (and gate/up) read the same tensor: its column sums are computed once and reused.
    """

    def __init__(self, widths: Mapping[str, int], masks: list[torch.Tensor], device: torch.device) -> None:
        import torch

        self.sums = {name: torch.zeros(width, dtype=torch.float64, device=device) for name, width in widths.items()}
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

    def result(self, tokens: int, chunk_size: int, datasets: tuple[str, ...]) -> MatmulSums:
        return MatmulSums({k: v.cpu().numpy() for k, v in self.sums.items()}, tokens, chunk_size, datasets)
