"""The auto-split table a --target-ratio plan carries in its metadata, with the chosen split marked.

converter/score/autosplit.py measures each candidate (vocab, ffn) pair that meets the budget in
bits per byte on held-out calibration text and keeps the lowest; it records them all under
metadata["auto_split"] and the winner's score under metadata["heldout_bits_per_byte"]. The plan
that reaches the exporter is the winner, so the chosen row is the one with its sizes. Entries that
carry a general-capability "retention" record (converter/report/retention.py) keep it on their row.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converter.plan import PrunePlan
from converter.report.retention import read_retention


def auto_split_section(plan: PrunePlan, params: Callable[..., int] | None = None) -> dict[str, Any]:
    table = plan.metadata.get("auto_split")
    if not isinstance(table, list) or not table:
        return {"ran": False, "reason": "auto-split did not run: the plan was not chosen by --target-ratio"}
    rows: list[dict[str, Any]] = []
    for entry in table:
        if not isinstance(entry, dict):
            continue
        vocab, ffn, bpb = entry.get("vocab"), entry.get("ffn"), entry.get("bits_per_byte")
        if not isinstance(vocab, int) or not isinstance(ffn, int):
            continue
        moe = entry.get("moe_ffn")  # a mixture-of-experts candidate's expert width
        row: dict[str, Any] = {"vocab": vocab, "ffn": ffn, **({"moe_ffn": moe} if isinstance(moe, int) else {}),
                               "bits_per_byte": float(bpb) if isinstance(bpb, (int, float)) else None}
        if params is not None:
            row["params"] = params(vocab, ffn, moe) if isinstance(moe, int) else params(vocab, ffn)
        row["chosen"] = (vocab, ffn, moe if isinstance(moe, int) else plan.moe_intermediate_size) == \
            (plan.vocab_size, plan.intermediate_size, plan.moe_intermediate_size)
        if isinstance(entry.get("objective"), (int, float)):
            row["objective"] = float(entry["objective"])
        if entry.get("over_cap") is True:
            row["over_cap"] = True
        if "retention" in entry:
            row["retention"] = read_retention(entry["retention"])
        rows.append(row)
    section: dict[str, Any] = {"ran": bool(rows), "candidates": rows,
                               "target_ratio": (plan.metadata.get("budget") or {}).get("target_ratio"),
                               "heldout_bits_per_byte": plan.metadata.get("heldout_bits_per_byte"),
                               "general_weight": plan.metadata.get("general_weight"),
                               "max_dropped_share": plan.metadata.get("max_dropped_share")}
    if not rows:
        section["reason"] = "the plan's auto_split metadata is unreadable"
    elif all(r["bits_per_byte"] is None for r in rows):
        section["reason"] = "only one split met the budget, so nothing was measured"
    return section
