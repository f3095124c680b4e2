"""The auto-split objective: domain and general costs on one scale, and the dropped-byte cap.

The candidate costs below are SmolLM2-135M's at -20% on licence prose (tools/results/
frontier_smollm2.md: 13965 tokens +4.6% domain / 4.63x answers, 16844 tokens +8.5% / 2.87x) with
one split between them; blending the raw ratios left the domain end from a weight of 0.03 up, the scaled
objective walks from one end to the other as the weight grows.
"""
from __future__ import annotations

import pytest

from converter.score.split_objective import Measured, best, objectives, over_cap

DOMAIN_FIRST = Measured(0.9805, 1.046, 4.63, 0.22)
BETWEEN = Measured(0.9900, 1.060, 3.50, 0.12)
GENERAL_FIRST = Measured(1.0169, 1.085, 2.87, 0.074)
FRONTIER = [DOMAIN_FIRST, BETWEEN, GENERAL_FIRST]


def test_weight_zero_is_plain_bits_per_byte() -> None:
    assert objectives(FRONTIER, 0.0) == [c.bits_per_byte for c in FRONTIER]
    assert best(FRONTIER, 0.0, None) == 0


def test_unmeasured_general_cost_falls_back_to_bits_per_byte() -> None:
    candidates = [Measured(1.2, 1.2), Measured(1.1, 1.1)]
    assert objectives(candidates, 0.5) == [1.2, 1.1]


def test_each_cost_is_scaled_by_the_best_candidates_excess() -> None:
    domain_only, general_only = objectives(FRONTIER, 0.0 + 1e-12), objectives(FRONTIER, 1.0)
    assert domain_only[0] == pytest.approx(1.0) and general_only[2] == pytest.approx(1.0)
    assert general_only[0] == pytest.approx(3.63 / 1.87)
    assert domain_only[2] == pytest.approx(0.085 / 0.046, rel=1e-6)


def test_the_weight_walks_the_frontier_instead_of_switching() -> None:
    picks = [best(FRONTIER, w, None) for w in (0.0, 0.03, 0.15, 0.3, 0.5, 0.7, 0.9, 1.0)]
    assert picks[:3] == [0, 0, 0]
    assert 1 in picks and picks[-1] == 2
    assert picks == sorted(picks)
    raw = [(1 - 0.03) * c.domain_ratio + 0.03 * (c.general_ratio or 0) for c in FRONTIER]
    assert raw.index(min(raw)) != 0  # the old blend: already off the domain end at a weight of 0.03


def test_candidates_over_the_cap_lose_to_every_candidate_within_it() -> None:
    assert best(FRONTIER, 0.0, 0.15) == 1
    assert best(FRONTIER, 0.0, 0.10) == 2
    assert over_cap(DOMAIN_FIRST, 0.15) and not over_cap(BETWEEN, 0.15) and not over_cap(BETWEEN, None)
    assert best(FRONTIER, 0.0, 0.01) == 0  # none within: the best objective of all
    assert not over_cap(Measured(1.0, 1.0), 0.0)  # dropped share not measured
