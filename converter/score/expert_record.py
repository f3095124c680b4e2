"""Per-expert statistics of a mixture-of-experts model, as a scores file stores them.

For every layer and expert: the channel importance of the expert's FFN bucketed by token
frequency rank like the dense `importance` (`expert_importance` [layers, experts, buckets,
moe_ffn], float64: act² of act_fn(gate) * up summed over the tokens routed to the expert, each
weighted by the router weight its output gets), how many tokens were routed to it
(`expert_tokens` [layers, experts], int64) and their summed router weight (`expert_gate`
[layers, experts], float64). Layers without experts (a dense layer among MoE ones) hold zeros.
The buckets are kept for the same reason as for dense channels: the common-token weighting
depends on the vocabulary a plan keeps (converter.score.expert_channels contracts them). Every
statistic is a sum over positions, so shards and ranks merge by adding. Dense models store
none, and files from before these tensors load without them. Plain numpy: reading and merging
scores files never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TENSORS = ("expert_importance", "expert_tokens", "expert_gate")


@dataclass(frozen=True)
class ExpertSums:
    """Routed-token sums per layer and expert (see the module docstring for the shapes)."""

    importance: np.ndarray = field(compare=False)
    tokens: np.ndarray = field(compare=False)
    gate: np.ndarray = field(compare=False)

    @property
    def experts(self) -> int:
        return int(self.importance.shape[1])

    @property
    def width(self) -> int:
        return int(self.importance.shape[3])

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {"expert_importance": self.importance.astype(np.float64), "expert_tokens": self.tokens.astype(np.int64),
                "expert_gate": self.gate.astype(np.float64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> ExpertSums | None:
        """The record from a scores file's tensors; None when it holds none (a dense model, an older file)."""
        if not all(name in tensors for name in TENSORS):
            return None
        return cls(tensors["expert_importance"], tensors["expert_tokens"], tensors["expert_gate"])

    def fits(self, layers: int, buckets: int) -> bool:
        """Whether the shapes agree with each other and with the dense statistics' layers and buckets."""
        imp = self.importance
        return (imp.ndim == 4 and imp.shape[:1] == (layers,) and imp.shape[2] == buckets
                and self.tokens.shape == imp.shape[:2] and self.gate.shape == imp.shape[:2])

    def added(self, other: ExpertSums) -> ExpertSums | None:
        """Both shards' sums; None when their shapes differ (they describe different models)."""
        if self.importance.shape != other.importance.shape:
            return None
        return ExpertSums(self.importance + other.importance, self.tokens + other.tokens, self.gate + other.gate)


def add_expert_sums(a: ExpertSums | None, b: ExpertSums | None) -> ExpertSums | None:
    """Sum of two files' expert statistics; a file without them (counts only) adds nothing."""
    if a is None or b is None:
        return b if a is None else a
    return a.added(b)
