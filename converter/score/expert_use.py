"""How often each expert was chosen on the calibration text: the rows of the expert-use histogram.

Users of MoE models want to see which experts their text uses: a pruned expert that saw no
token kept channels chosen by nothing, and a layer whose load is uneven tells why. Each row is one
(layer, expert) with its routed-token count, its share of the layer's routed slots, and its load
(share times the number of experts: 1.0 is a uniform router, 0 an expert never chosen). The
report draws its table and histogram from these rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.errors import ConvertError


@dataclass(frozen=True)
class ExpertUse:
    """One expert of one layer on the calibration text."""

    layer: int
    expert: int
    tokens: int
    share: float
    load: float

    @property
    def unused(self) -> bool:
        return self.tokens == 0


def expert_use_table(tokens: np.ndarray) -> list[ExpertUse]:
    """Rows in layer, then expert order from routed-token counts [layers, experts]; a layer that routed
    nothing (a dense layer) has no rows."""
    if tokens.ndim != 2:
        raise ConvertError(f"expert token counts must be [layers, experts], got shape {tokens.shape}")
    rows = []
    experts = tokens.shape[1]
    for layer, counts in enumerate(tokens.astype(np.int64)):
        total = int(counts.sum())
        if total == 0:
            continue
        rows += [ExpertUse(layer, expert, int(n), int(n) / total, experts * int(n) / total)
                 for expert, n in enumerate(counts)]
    return rows
