"""Frequency-rank buckets: how per-token activation statistics stay small and serve every budget.

Channel importance is accumulated per bucket of token-frequency rank rather than per token: the
ranks (0 = most common) are cut at log-spaced edges, a few per octave, so the buckets are fine
among common tokens and coarse in the long tail. A vocabulary cut keeps a set of ranks, so the
common-token score for any vocabulary size is a weighted sum over buckets: each bucket weighs by
the share of its occurrences that the kept vocabulary keeps (1 below the cut, 0 above, a fraction
in the bucket the cut crosses or where the tokenizer rules add tokens). When the whole
calibration sample survives the cut that alone equals plain act², so an optional `focus`
exponent also weighs each bucket by how common its tokens are (mean count per token, relative
to the most common bucket): focus 0 is COMPACT as published, focus > 0 leans further on the
tokens the pruned model will see most.

A layout (edges plus the bucket of every token id) is part of a scores file; files merge only if
their layouts agree, so shards scored apart share one with `--layout-from`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BINS_PER_OCTAVE = 4


def log_edges(vocab: int, per_octave: int = BINS_PER_OCTAVE) -> tuple[int, ...]:
    """Rank edges 0, 1, 2, ... growing by 2**(1/per_octave), ending at vocab."""
    edges = {0, vocab}
    k = 0
    while True:
        edge = round(2 ** (k / per_octave))
        if edge >= vocab:
            break
        edges.add(edge)
        k += 1
    return tuple(sorted(edges))


@dataclass(frozen=True)
class BucketLayout:
    """Rank edges and the bucket of every token id."""

    edges: tuple[int, ...]
    token_bucket: np.ndarray = field(compare=False, repr=False)

    @property
    def buckets(self) -> int:
        return len(self.edges) - 1

    @property
    def layout_id(self) -> str:
        h = hashlib.sha256(np.asarray(self.edges, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.token_bucket, dtype=np.int32).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_ranking(cls, order: np.ndarray, per_octave: int = BINS_PER_OCTAVE) -> BucketLayout:
        """Bucket each token by its position in `order` (ids from most to least common)."""
        vocab = order.shape[0]
        edges = log_edges(vocab, per_octave)
        rank = np.empty(vocab, dtype=np.int64)
        rank[order] = np.arange(vocab)
        bucket = np.searchsorted(np.asarray(edges[1:]), rank, side="right").astype(np.int32)
        return cls(edges, bucket)


def bucket_weights(layout: BucketLayout, counts: np.ndarray, kept_ids: Sequence[int] | np.ndarray | None,
                   focus: float = 0.0) -> np.ndarray:
    """Weight of each bucket in the common-token score for a kept vocabulary (None: all kept)."""
    counts = counts.astype(np.float64)
    mass = np.bincount(layout.token_bucket, weights=counts, minlength=layout.buckets)
    if kept_ids is None:
        kept_mass = mass
    else:
        keep = np.zeros(counts.shape[0], dtype=bool)
        keep[np.asarray(kept_ids, dtype=np.int64)] = True
        kept_mass = np.bincount(layout.token_bucket, weights=counts * keep, minlength=layout.buckets)
    weights = np.divide(kept_mass, mass, out=np.zeros_like(mass), where=mass > 0)
    if focus:
        sizes = np.bincount(layout.token_bucket, minlength=layout.buckets).astype(np.float64)
        per_token = np.divide(mass, sizes, out=np.zeros_like(mass), where=sizes > 0)
        top = per_token.max() if per_token.size and per_token.max() > 0 else 1.0
        weights = weights * (per_token / top) ** focus
    return weights
