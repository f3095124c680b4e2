"""How much each input column of a matmul matters, for the int4/int8 block quantizer.

The scoring pass keeps, per matmul weight, the sum of each input column's square over the
calibration text (converter.score.matmul_inputs; the GGUF exporter hands the same sums to llama.cpp
as its importance matrix). A block's rounding error on a column that sees large inputs moves the
output more, so the quantizer weighs each column's squared error by these sums: a weight's columns
are cut through the plan as the weight is (down_proj keeps its kept FFN channels' sums; q/k/v/o,
gate/up and the LM head read the uncut hidden state), and scaled to a mean of 1 with a small floor, so
a column no calibration token reached still counts a little. A tied embedding is quantized as the
LM head (its matmul use); an untied embedding table (a lookup: the scores hold no sums under its
name) and any other weight the scores do not cover get none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.prune import PlannedTensor
from converter.score.matmul_inputs import OUTPUT_NAME, MatmulSums, planned_columns

FLOOR = 1e-3


def column_weights(sums: MatmulSums, planned: PlannedTensor, head: bool, where: Path) -> np.ndarray | None:
    """float32 weights, one per input column of the matrix written from `planned` (the first of a packed
    job's sources: they share their input), or None; `head`: it is written as the LM head."""
    name = OUTPUT_NAME if head else planned.name
    found = sums.sums.get(name)
    if found is None or found.ndim != 1:
        return None
    found = planned_columns(found, planned, name, where)
    mean = float(found.mean())
    scaled = found / mean if mean > 0 else np.ones_like(found)
    return (scaled + FLOOR).astype(np.float32)
