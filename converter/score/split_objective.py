"""Which auto-split candidate wins: domain cost and general cost on one scale, and a dropped-byte cap.

Each measured candidate has a domain cost (held-out calibration bits per byte over the dense
model's) and, with scores that hold the general probe's answers, a general cost (the uncounted
"select" answers' bits per byte over the dense model's) and the share of those answers' bytes that
fall in dropped tokens. The two costs live on different scales: on SmolLM2 at -20% the domain
ratios of the candidates differ by hundredths (1.046 .. 1.092) while the answer ratios differ by
whole units (2.8x .. 4.6x), so blending the raw ratios made --general-weight a switch (every
weight from 0.03 chose the same plan; tools/results/frontier_smollm2.md). Each cost is therefore
measured as its excess over the dense model divided by the smallest excess any candidate reached
(1.0 = the best candidate for that use, 2.0 = twice its loss), and the objective is
(1 - W) x domain + W x general. Candidates above `max_dropped` (a cap on the select answers'
dropped share: a general model must not lose everyday words such as " Paris") rank after all that
meet it, so refinement and the final choice stay among the plans that keep them. W = 0 and no
cap: plain held-out bits per byte, as before.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FLOOR = 1e-3  # excess treated as at least 0.1%, so a candidate that matches dense does not divide by zero


@dataclass(frozen=True)
class Measured:
    """One candidate's costs: domain ratio, general ratio and select dropped share (None: not measured)."""

    bits_per_byte: float
    domain_ratio: float
    general_ratio: float | None = None
    dropped: float | None = None


def objectives(candidates: Sequence[Measured], weight: float) -> list[float]:
    """The blended objective of every candidate, each cost scaled by the best candidate's excess."""
    if weight <= 0 or any(c.general_ratio is None for c in candidates):
        return [c.bits_per_byte for c in candidates]
    domain = max(FLOOR, min(c.domain_ratio for c in candidates) - 1)
    general = max(FLOOR, min(c.general_ratio for c in candidates if c.general_ratio is not None) - 1)
    return [(1 - weight) * max(FLOOR, c.domain_ratio - 1) / domain
            + weight * max(FLOOR, (c.general_ratio or 1.0) - 1) / general for c in candidates]


def over_cap(candidate: Measured, max_dropped: float | None) -> bool:
    return max_dropped is not None and candidate.dropped is not None and candidate.dropped > max_dropped


def best(candidates: Sequence[Measured], weight: float, max_dropped: float | None) -> int:
    """Index of the winner: lowest objective among the candidates within the cap (all of them if none is)."""
    scores = objectives(candidates, weight)
    return min(range(len(candidates)), key=lambda i: (over_cap(candidates[i], max_dropped), scores[i]))
