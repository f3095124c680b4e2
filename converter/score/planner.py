"""From scores and a budget to a PrunePlan: vocabulary by counts, FFN channels by a criterion.

Vocabulary: tokens ranked by count (blended with the general probe's answers by
--general-weight), ties broken by the model's predicted counts and then the tokenizer's prior
(converter.score.tokens); the top of the ranking goes through the tokenizer
keep-set rules (converter.tokenizer.plan_tokenizer), which add specials, bytes and the BPE merge
closure, so fewer tokens are requested until the final set fits the vocabulary target (requested
and final sizes are both reported). Channels, per layer:
`compact` sums the bucketed act² weighted by how much of each bucket's occurrences the final
vocabulary keeps (and, with focus > 0, by how common its tokens are); `act2` is plain act²
(Minitron-style), `magnitude` the weights' L2 norm, `random` a seeded draw. Every layer keeps
the same number of channels.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.errors import ConvertError
from converter.source import Source
from converter.plan import PrunePlan
from converter.score.buckets import bucket_weights
from converter.score.budget import ParamModel
from converter.score.expert_plan import expert_use_metadata, plan_expert_channels
from converter.score.scores import Scores
from converter.score.stage_options import METHODS
from converter.score.tokens import token_ranking

FIT_STEPS = 12


@dataclass(frozen=True)
class VocabChoice:
    """The final kept ids for a vocabulary target, and how many of them were asked for."""

    kept_ids: tuple[int, ...]
    requested: int
    target: int
    added_by_rules: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.kept_ids)


class VocabFitter:
    """Finds the longest prefix of the token ranking whose keep set fits a vocabulary target."""

    def __init__(self, source: Source, scores: Scores, keep_reserved: bool = False,
                 general_weight: float = 0.0) -> None:
        self.source = source
        self.vocab = source.spec.dims.vocab
        probe = scores.probe
        general = None if probe is None else (probe.general_counts, probe.general_predicted)
        self.order = token_ranking(source.folder, scores.counts, scores.predicted, general, general_weight)
        self.keep_reserved = keep_reserved
        self._cache: dict[int, Any] = {}

    def _rewrite(self, n: int) -> Any:
        if n not in self._cache:
            from converter.tokenizer import plan_tokenizer

            self._cache[n] = plan_tokenizer(self.source.folder, sorted(int(i) for i in self.order[:n]),
                                            vocab_size=self.vocab, keep_reserved=self.keep_reserved)
        return self._cache[n]

    def minimum(self) -> int:
        """The fewest tokens any plan keeps (what the rules add to a single requested token)."""
        return len(self._rewrite(1).kept_ids)

    def fit(self, target: int) -> VocabChoice:
        if target >= self.vocab:
            return VocabChoice(tuple(range(self.vocab)), self.vocab, target)
        floor = self.minimum()
        if target < floor:
            raise ConvertError(f"--vocab-size {target} is below the {floor} tokens the tokenizer must keep (special "
                               "tokens, byte alphabet, chat template); ask for at least that many")
        lo, hi = 1, target
        best = self._rewrite(1)
        best_n = 1
        n = target
        for _ in range(FIT_STEPS):
            if lo > hi:
                break
            n = min(max(n, lo), hi)
            size = len(self._rewrite(n).kept_ids)
            if size <= target:
                if n >= best_n:
                    best, best_n = self._rewrite(n), n
                if size == target:
                    break
                lo = n + 1
                n = n + (target - size)
            else:
                hi = n - 1
                n = n - (size - target)
        added = {k: v for k, v in best.added_by_rules.items() if v}
        return VocabChoice(tuple(best.kept_ids), best_n, target, added)


def channel_scores(scores: Scores, method: str, kept_ids: Sequence[int] | None, focus: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """[layers, ffn] importance under `method` (higher is kept first)."""
    if method == "compact":
        weights = bucket_weights(scores.layout, scores.counts, kept_ids, focus)
        return np.einsum("lbf,b->lf", scores.importance, weights)
    if method == "act2":
        return scores.act2.astype(np.float64)
    if method == "magnitude":
        return scores.magnitude.astype(np.float64)
    if method == "random":
        return np.random.default_rng(seed).random((scores.layers, scores.ffn))
    raise ConvertError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")


def select_channels(importance: np.ndarray, keep: int) -> tuple[tuple[int, ...], ...]:
    """The `keep` highest-scoring channels of every layer (ties to the lower index), sorted."""
    out = []
    for row in importance:
        order = np.lexsort((np.arange(row.size), -row))
        out.append(tuple(sorted(int(c) for c in order[:keep])))
    return tuple(out)


def coverage(counts: np.ndarray, kept_ids: Sequence[int]) -> float:
    """Fraction of counted calibration tokens that the kept vocabulary still has as single tokens."""
    total = counts.sum()
    return float(counts[np.asarray(kept_ids, dtype=np.int64)].sum() / total) if total else 1.0


def build_plan(source: Source, scores: Scores, vocab: VocabChoice, ffn: int, method: str, model: ParamModel,
               focus: float = 0.0, seed: int = 0, extra: dict[str, Any] | None = None, moe: int = 0) -> PrunePlan:
    """A plan keeping `vocab.kept_ids` and the `ffn` best channels per layer (a mixture-of-experts model: also
    each expert's `moe` best channels; `ffn` is its shared expert's width, 0 when it has none), with its
    predicted sizes."""
    dims = source.spec.dims
    if (dims.ffn or not dims.experts) and not 0 < ffn <= dims.ffn:
        raise ConvertError(f"--intermediate-size {ffn} must be between 1 and the model's {dims.ffn}")
    if (ffn < dims.ffn or moe < dims.moe_ffn) and method in ("compact", "act2") and scores.tokens_scored == 0:
        raise ConvertError("the scores hold token counts only (scored with --counts-only), no activations to rank "
                           f"FFN channels by --method {method}; score without --counts-only")
    kept = None if vocab.size == dims.vocab else vocab.kept_ids
    channels = select_channels(channel_scores(scores, method, kept, focus, seed), ffn) if dims.ffn else ()
    experts = plan_expert_channels(scores, method, kept, moe, dims, focus, seed) if dims.experts else ()
    moe_size = {"moe_intermediate_size": moe} if dims.experts else {}
    use = {"expert_use": expert_use_metadata(scores)} if dims.experts else {}  # last: the longest entry
    after = model.params(vocab.size, ffn, moe if dims.experts else None)
    metadata: dict[str, Any] = {
        "method": method,
        "focus": focus,
        "seed": seed,
        "vocab_target": vocab.target,
        "vocab_requested": vocab.requested,
        "vocab_final": vocab.size,
        "vocab_added_by_rules": vocab.added_by_rules,
        "intermediate_size": ffn,
        **moe_size,
        "params_before": model.total,
        "params_after_predicted": after,
        "params_removed_fraction": round(1 - after / model.total, 6),
        "calibration_coverage": round(coverage(scores.counts, vocab.kept_ids), 6),
        "scores": scores.describe(),
        **(extra or {}),
        **use,
    }
    return PrunePlan(tuple(vocab.kept_ids), channels, scores.fingerprint, metadata, kept_expert_channels=experts)


def report(plan: PrunePlan, model: ParamModel, out: Any = None) -> None:
    """Print the chosen sizes, the parameter arithmetic and the calibration coverage (stderr by default)."""
    out = out or sys.stderr
    m = plan.metadata
    print(f"vocab      {model.vocab} -> {plan.vocab_size} ({m.get('vocab_requested')} requested by count, "
          f"{plan.vocab_size - int(m.get('vocab_requested', plan.vocab_size))} added by tokenizer rules)", file=out)
    if model.ffn:
        print(f"ffn        {model.ffn} -> {plan.intermediate_size} (method {m.get('method')})", file=out)
    if model.moe_ffn:
        print(f"experts    {model.moe_ffn} -> {plan.moe_intermediate_size} per expert, each its own channels "
              f"(method {m.get('method')})", file=out)
    print(model.arithmetic(plan.vocab_size, plan.intermediate_size, plan.moe_intermediate_size or None), file=out)
    print(f"coverage   the kept vocabulary covers {100 * float(m.get('calibration_coverage', 1)):.2f}% of the "
          "calibration tokens", file=out)
