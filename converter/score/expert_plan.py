"""A mixture-of-experts plan's expert half: each expert's kept channels, and the expert-use table it records.

Every routed expert of every layer keeps the same number of channels (one `moe_intermediate_size`,
a standard config again) but chooses them from its own scores: under `--method compact` its
routed, router-weighted act² contracted with the common-token weights of the plan's kept
vocabulary (converter.score.expert_channels), under `act2` the same sums unweighted, under
`random` a seeded draw. Per-expert weight norms are not scored, so `magnitude` is refused (by
Budget.check). The plan's metadata also carries the expert-use table on the calibration text
(converter.score.expert_use), which the report draws as the "Expert use" section.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.arch.spec import ModelDims
from converter.errors import ConvertError
from converter.score.expert_channels import expert_channel_scores, keep_expert_channels
from converter.score.expert_use import expert_use_table
from converter.score.scores import Scores

ExpertChannels = tuple[tuple[tuple[int, ...], ...], ...]


def expert_scores(scores: Scores, method: str, kept_ids: Sequence[int] | None, focus: float, seed: int,
                  dims: ModelDims, path: Path | str = "scores") -> np.ndarray:
    """[layers, experts, moe_ffn] importance of every expert's channels under `method` (higher is kept first)."""
    if method == "random":
        return np.random.default_rng(seed).random((dims.layers, dims.experts, dims.moe_ffn))
    experts = scores.experts
    if experts is None:
        raise ConvertError("the scores hold no per-expert statistics (scored with --counts-only, or before MoE "
                           "scoring existed); score the model again to cut its experts", path)
    want = (dims.layers, dims.experts, dims.moe_ffn)
    got = (experts.importance.shape[0], experts.experts, experts.width)
    if got != want:
        raise ConvertError(f"the scores' expert statistics are for {got[0]} layers of {got[1]} experts {got[2]} "
                           f"wide, the model has {want[0]} of {want[1]} experts {want[2]} wide", path)
    if method == "act2":
        return experts.importance.sum(axis=2)
    return expert_channel_scores(experts, scores.layout, scores.counts, kept_ids, focus)


def plan_expert_channels(scores: Scores, method: str, kept_ids: Sequence[int] | None, width: int, dims: ModelDims,
                         focus: float = 0.0, seed: int = 0, path: Path | str = "scores") -> ExpertChannels:
    """Per layer, per expert, the `width` channels the expert keeps (all of them at the experts' full width)."""
    if not 0 < width <= dims.moe_ffn:
        raise ConvertError(f"--moe-intermediate-size {width} must be between 1 and the experts' {dims.moe_ffn}")
    if width == dims.moe_ffn:
        every = tuple(range(width))
        return tuple(tuple(every for _ in range(dims.experts)) for _ in range(dims.layers))
    return keep_expert_channels(expert_scores(scores, method, kept_ids, focus, seed, dims, path), width)


def expert_use_metadata(scores: Scores) -> list[dict[str, Any]]:
    """The expert-use table as plan metadata: one row per (layer, expert) with tokens, share and load."""
    if scores.experts is None:
        return []
    return [{"layer": r.layer, "expert": r.expert, "tokens": r.tokens, "share": round(r.share, 6),
             "load": round(r.load, 6)} for r in expert_use_table(scores.experts.tokens)]
