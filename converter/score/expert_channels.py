"""Which channels each expert keeps: its own top channels by importance, one width for every expert.

A pruned MoE checkpoint stays a standard config only if every expert of every layer has the same
`moe_intermediate_size`, so the planner asks for one `width` and each expert keeps its `width`
most important channels (ties to the lower index, the rule dense layers follow in
converter.score.planner.select_channels), listed in ascending order as the surgery reads them.
The importance is the scores' bucketed per-expert act² contracted with the common-token bucket
weights of the kept vocabulary, exactly as dense channels are ranked under `--method compact`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from converter.errors import ConvertError
from converter.score.buckets import BucketLayout, bucket_weights
from converter.score.expert_record import ExpertSums


def expert_channel_scores(experts: ExpertSums, layout: BucketLayout, counts: np.ndarray,
                          kept_ids: Sequence[int] | None, focus: float = 0.0) -> np.ndarray:
    """[layers, experts, moe_ffn] common-token importance for a kept vocabulary (None: all kept)."""
    return np.einsum("lebf,b->lef", experts.importance, bucket_weights(layout, counts, kept_ids, focus))


def keep_expert_channels(importance: np.ndarray, width: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per layer, per expert, the `width` highest-importance channel ids (ties to the lower id), sorted."""
    if importance.ndim != 3:
        raise ConvertError(f"expert importance must be [layers, experts, moe_ffn], got shape {importance.shape}")
    if not 0 < width <= importance.shape[2]:
        raise ConvertError(f"the expert width {width} must be between 1 and the experts' {importance.shape[2]}")
    ids = np.arange(importance.shape[2])
    return tuple(tuple(tuple(sorted(int(c) for c in np.lexsort((ids, -row))[:width])) for row in layer)
                 for layer in importance)
