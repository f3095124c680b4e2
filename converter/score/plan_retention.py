"""Retention of a candidate plan, measured at plan time on the dense model's held-out probe answers.

Planning already holds a ModelRunner to simulate candidate plans (converter.score.autosplit), so
each candidate, and the plan chosen, is judged on the held-out general-probe answers stored in
the scores (converter.score.probe_record) without exporting anything: the share of the answers'
bytes that fall in dropped tokens, and the candidate's answer bits per byte against the dense
model's (converter.score.retention). The held-out answers never entered the counts, so the
figures are not tuned on what chose the tokens. The "select" answers (asked while scoring, never
counted) serve the split objective instead (`general_ratio`, weighed by --general-weight, and
`select_dropped`, capped by --max-dropped-share). The
report and verify read the metadata keys written here: {"measured", "split", "prompts",
"answer_bytes", "dropped_share", "answer_bpb", "dense_answer_bpb", "ratio"}, or {"measured":
false, "reason"}. torch is imported only when a meter is built, so a plan with exact sizes still
runs without it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.plan import PrunePlan
from converter.score.scores import Scores

if TYPE_CHECKING:
    from converter.score.engine import ModelRunner
    from converter.score.general_probe import ProbeAnswer


def not_measured(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


def missing_reason(scores: Scores) -> str | None:
    """Why these scores cannot measure retention (no held-out probe answers), or None when they can."""
    if scores.probe is None:
        return ("the scores hold no general-probe answers (" + (scores.probe_note or "scored before they existed")
                + "); score again in whole mode to measure retention")
    if not scores.probe.prompts("heldout"):
        return "the scores hold no held-out general-probe answers (scored with --probe-heldout 0)"
    return None


class RetentionMeter:
    """Dropped byte share and answer bits per byte of candidate plans on the stored probe answers."""

    def __init__(self, runner: ModelRunner, tokenizer: Any, scores: Scores) -> None:
        from converter.score.retention import answer_bytes, token_byte_table

        probe = scores.probe
        if probe is None:
            raise ValueError("RetentionMeter needs scores with probe answers")
        self.runner = runner
        self.heldout = [a for a in probe.probe_answers(tokenizer, "heldout") if a.answer_ids]
        self.calib = [a for a in probe.probe_answers(tokenizer, "select") if a.answer_ids]
        self.table = token_byte_table(tokenizer)
        self.heldout_bytes = answer_bytes(self.heldout)
        self.calib_bytes = answer_bytes(self.calib)
        self.dense_bpb = self._bits(self.heldout, None, None, None, None) / max(1, self.heldout_bytes)
        self._dense_calib: float | None = None

    def _bits(self, answers: Sequence[ProbeAnswer], tokenizer: Any, rows: Sequence[int] | None,
              channels: Sequence[Sequence[int]] | None, maps: Sequence[np.ndarray] | None,
              experts: Sequence[Sequence[Sequence[int]]] | None = None) -> float:
        from converter.score.retention import retokenize, runner_answer_nll_bits

        if tokenizer is not None:
            answers = retokenize(answers, tokenizer)
        return runner_answer_nll_bits(self.runner, answers, rows, channels, maps, experts)

    def measure(self, plan: PrunePlan, tokenizer: Any = None, rows: Sequence[int] | None = None,
                maps: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
        """Retention of `plan` on the held-out answers; `tokenizer` and `rows` are the pruned vocabulary's."""
        from converter.score.retention import dropped_byte_share

        bpb = self._bits(self.heldout, tokenizer, rows, plan.kept_ffn_channels, maps,
                         plan.kept_expert_channels) / max(1, self.heldout_bytes)
        ratio = bpb / self.dense_bpb if self.dense_bpb > 0 else float("inf")
        return {"measured": True, "split": "heldout", "prompts": len(self.heldout),
                "answer_bytes": self.heldout_bytes,
                "dropped_share": round(dropped_byte_share(self.heldout, plan.kept_token_ids, self.table), 6),
                "answer_bpb": round(bpb, 5), "dense_answer_bpb": round(self.dense_bpb, 5), "ratio": round(ratio, 4)}

    def select_dropped(self, plan: PrunePlan) -> float | None:
        """Share of the select answers' bytes in tokens the plan drops (None without select answers)."""
        from converter.score.retention import dropped_byte_share

        return dropped_byte_share(self.calib, plan.kept_token_ids, self.table) if self.calib_bytes else None

    def general_ratio(self, plan: PrunePlan, tokenizer: Any = None, rows: Sequence[int] | None = None,
                      maps: Sequence[np.ndarray] | None = None) -> float:
        """Answer bits per byte on the select answers, pruned over dense: the split objective's general part."""
        if not self.calib_bytes:
            return 1.0
        if self._dense_calib is None:
            self._dense_calib = self._bits(self.calib, None, None, None, None) / self.calib_bytes
        bpb = self._bits(self.calib, tokenizer, rows, plan.kept_ffn_channels, maps,
                         plan.kept_expert_channels) / self.calib_bytes
        return bpb / self._dense_calib if self._dense_calib > 0 else 1.0
