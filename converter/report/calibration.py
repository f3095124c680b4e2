"""What the scores say about the chosen plan: calibration coverage and per-layer FFN importance.

Coverage: tokens sorted by calibration count, the cumulative share of all counted tokens that
the N most frequent cover, against N, beside the share the plan's kept vocabulary actually
covers (the tokenizer rules add tokens that are not among the most frequent, so the two differ).
FFN importance: each layer's channel importance under the plan's criterion, the share of the
layer's total that the kept channels hold, and the sorted importance curve for the heatmap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.plan import PrunePlan

if TYPE_CHECKING:
    from converter.score.scores import Scores

CURVE_POINTS = 2000
HEATMAP_COLUMNS = 512
COVERAGE_MILESTONES = (0.9, 0.95, 0.99, 0.999)


@dataclass(frozen=True)
class CoverageCurve:
    """Cumulative token mass covered by the `sizes[i]` most frequent tokens, for the plot."""

    sizes: np.ndarray
    covered: np.ndarray
    vocab_before: int
    vocab_after: int
    kept_coverage: float


@dataclass(frozen=True)
class ImportanceMap:
    """Per layer, the importance of every channel sorted descending (scaled to the layer's maximum)."""

    sorted_rows: np.ndarray
    ffn_before: int
    ffn_after: int
    kept_share: tuple[float, ...]
    method: str


def coverage_section(scores: Scores, plan: PrunePlan) -> tuple[dict[str, Any], CoverageCurve | None]:
    counts = np.asarray(scores.counts, dtype=np.int64)
    total = int(counts.sum())
    section: dict[str, Any] = {"available": total > 0, "tokens_counted": int(scores.tokens_counted),
                               "corpus": list(scores.corpus)}
    if total == 0:
        section["reason"] = "the scores counted no calibration tokens"
        return section, None
    from converter.score.planner import coverage  # the planner pulls in the tokenizer: only with scores

    cumulative = np.cumsum(np.sort(counts)[::-1]) / total
    kept = coverage(counts, plan.kept_token_ids)
    size = plan.vocab_size
    section.update({
        "distinct_tokens_seen": int((counts > 0).sum()),
        "kept_vocab_coverage": round(kept, 6),
        "top_n_coverage_at_kept_size": round(float(cumulative[size - 1]), 6),
        "vocab_needed_for": {f"{m:g}": int(np.searchsorted(cumulative, m - 1e-12) + 1) for m in COVERAGE_MILESTONES},
    })
    points = min(CURVE_POINTS, counts.size)  # the plot's x axis is logarithmic: sample evenly on it
    sizes = np.unique(np.geomspace(1, counts.size, points).round().astype(np.int64))
    curve = CoverageCurve(sizes, cumulative[sizes - 1], counts.size, size, kept)
    return section, curve


def importance_section(scores: Scores, plan: PrunePlan) -> tuple[dict[str, Any], ImportanceMap | None]:
    from converter.score.planner import METHODS, channel_scores

    meta = plan.metadata
    if scores.ffn == 0:  # a mixture of experts without a shared expert: its channels are the experts'
        return {"available": False, "reason": "the model has no dense or shared-expert FFN (its experts' use is "
                "in the Expert use section)"}, None
    method = meta.get("method") if meta.get("method") in METHODS else "compact"
    kept_ids = None if plan.keeps_all_tokens(scores.vocab) else plan.kept_token_ids
    focus = float(meta.get("focus", 0.0) or 0.0)
    seed = int(meta.get("seed", 0) or 0)
    importance = channel_scores(scores, str(method), kept_ids, focus, seed)
    totals = importance.sum(axis=1)
    section: dict[str, Any] = {"method": method, "available": bool(np.all(totals > 0))}
    if not section["available"]:
        section["reason"] = (f"the scores hold no {method} importance (scored with --counts-only?)")
        return section, None
    shares = tuple(round(float(importance[layer, list(channels)].sum() / totals[layer]), 6)
                   for layer, channels in enumerate(plan.kept_ffn_channels))
    section["kept_importance_share_per_layer"] = list(shares)
    section["kept_importance_share_mean"] = round(float(np.mean(shares)), 6)
    rows = -np.sort(-importance, axis=1)
    rows = rows / np.maximum(rows[:, :1], np.finfo(np.float64).tiny)
    columns = np.unique(np.linspace(0, rows.shape[1] - 1, min(HEATMAP_COLUMNS, rows.shape[1])).round().astype(int))
    return section, ImportanceMap(rows[:, columns], scores.ffn, plan.intermediate_size, shares, str(method))
