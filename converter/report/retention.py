"""General-capability retention as the report states it: read from the plan, never recomputed.

Planning measures, for the chosen plan and every auto-split candidate, how much of the dense
model's greedy answers to the general probe's held-out everyday prompts the pruned model can
still say (converter/score/retention.py): the share of the answers' bytes that fall in dropped
tokens, and the pruned model's teacher-forced bits per byte on those answers against the dense
model's. It reaches the export in plan.metadata["retention"] (and in each metadata["auto_split"]
entry); this module checks those records and says plainly when there are none: plans and scores
made before retention was measured, or with --counts-only, still load and report.
"""
from __future__ import annotations

import math
from typing import Any

from converter.plan import PrunePlan

NOT_MEASURED = ("the plan has no retention measurement (scores made before compact-convert measured it, or "
                "--counts-only)")
NUMBERS = ("dropped_share", "answer_bpb", "dense_answer_bpb", "ratio")
COUNTS = ("prompts", "answer_bytes")
SPLIT_WORDS = {"heldout": "held-out", "calib": "calibration"}


def read_retention(raw: object) -> dict[str, Any]:
    """One retention record as report.json states it: the measured figures, or measured false and why."""
    if raw is None:
        return {"measured": False, "reason": NOT_MEASURED}
    if not isinstance(raw, dict) or not isinstance(raw.get("measured"), bool):
        return {"measured": False, "reason": "the plan's retention metadata is unreadable (no measured flag)"}
    if not raw["measured"]:
        reason = raw.get("reason")
        return {"measured": False, "reason": str(reason) if reason else NOT_MEASURED}
    wrong = [k for k in NUMBERS if not _number(raw.get(k))] + [k for k in COUNTS if not _count(raw.get(k))]
    if wrong:
        return {"measured": False, "reason": f"the plan's retention metadata is unreadable ({', '.join(wrong)} "
                                             "missing or not a number)"}
    return {**raw, **{k: float(raw[k]) for k in NUMBERS}, **{k: int(raw[k]) for k in COUNTS}}


def retention_section(plan: PrunePlan) -> dict[str, Any]:
    """report.json's "retention": the plan's own measurement."""
    return read_retention(plan.metadata.get("retention"))


def split_words(section: dict[str, Any]) -> str:
    """How the prompts' probe split reads in a sentence ("held-out" for the default)."""
    split = section.get("split", "heldout")
    return SPLIT_WORDS.get(str(split), str(split))


def sentence(section: dict[str, Any]) -> str:
    """The report.md paragraph: what share of the answers the cut dropped, and how much harder they became."""
    if not section["measured"]:
        return f"Retention was not measured: {section['reason']}."
    ratio = section["ratio"]
    times = f"{ratio:.2f} times" if math.isfinite(ratio) else "an unbounded multiple of"
    return (f"**{100 * section['dropped_share']:.2f}%** of the dense model's answer bytes on {section['prompts']:,} "
            f"{split_words(section)} everyday prompts fall in dropped tokens; the pruned model needs **{times}** the "
            f"dense model's bits per byte on those answers ({section['answer_bpb']:.4f} against "
            f"{section['dense_answer_bpb']:.4f} bits per byte over {section['answer_bytes']:,} answer bytes, each "
            "model reading the answers through its own tokenizer).")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
