"""The report's "Expert use" section: how many calibration tokens each expert of each layer was routed.

Users of mixture-of-experts models want this histogram first: an expert that received no token
kept channels that nothing chose (its scores are all zero), and a lopsided layer tells how far
the calibration text is from what the router was trained on. The rows come from the plan's
metadata (converter.score.expert_plan records the expert-use table when scores make a plan) or,
for a hand-written plan exported with --scores, from the scores' routed-token counts. Dense
models have no such section.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from converter.plan import PrunePlan

if TYPE_CHECKING:
    from converter.score.scores import Scores

MATRIX_EXPERTS = 16  # report.md lists every expert's count up to this many experts per layer
NO_ROWS = ("neither the plan's metadata nor scores hold routed-token counts; pass --scores scores.safetensors "
           "beside --plan to get this section")


def _rows(plan: PrunePlan, scores: Scores | None) -> list[dict[str, Any]]:
    rows = plan.metadata.get("expert_use")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return rows
    if scores is not None and scores.experts is not None:
        from converter.score.expert_plan import expert_use_metadata

        return expert_use_metadata(scores)
    return []


def expert_use_section(plan: PrunePlan, layers: int, experts: int, scores: Scores | None) -> dict[str, Any]:
    """report.json's "expert_use": tokens [layers][experts], the unused (layer, expert) pairs and the load range."""
    rows = _rows(plan, scores)
    tokens = np.zeros((layers, experts), dtype=np.int64)
    routed = np.zeros(layers, dtype=bool)
    for r in rows:
        layer, expert, count = r.get("layer"), r.get("expert"), r.get("tokens")
        if isinstance(layer, int) and isinstance(expert, int) and isinstance(count, int) \
                and 0 <= layer < layers and 0 <= expert < experts:
            tokens[layer, expert] = count
            routed[layer] = True
    if not routed.any():
        return {"available": False, "reason": NO_ROWS}
    totals = tokens.sum(axis=1)
    loads = tokens * experts / np.maximum(totals, 1)[:, None]
    unused = [{"layer": int(layer), "expert": int(expert)} for layer, expert in zip(*np.nonzero(tokens == 0))
              if routed[layer]]
    return {"available": True, "layers": layers, "experts": experts, "tokens": tokens.tolist(),
            "unused": unused, "min_load": round(float(loads[routed].min()), 4),
            "max_load": round(float(loads[routed].max()), 4)}


def expert_use_lines(section: dict[str, Any], image: list[str]) -> list[str]:
    """report.md's section; `image` is the plot's line (or the reason it was not drawn)."""
    lines = ["## Expert use", ""]
    if not section["available"]:
        return [*lines, f"{section['reason']}.", ""]
    unused = section["unused"]
    named = ", ".join(f"layer {u['layer']} expert {u['expert']}" for u in unused)
    lines += ["Calibration tokens routed to each expert of each layer (each token counts once for each of its "
              "top-k experts); load is an expert's share of its layer's routed tokens times the number of experts "
              f"(1.0: uniform). Loads range from {section['min_load']:g} to {section['max_load']:g}.", "",
              (f"**{len(unused)} expert(s) received no token**: {named}. Their channels all scored zero: what "
               "they keep was chosen by no measurement.") if unused else "Every expert received tokens.", ""]
    tokens, experts = section["tokens"], section["experts"]
    if experts <= MATRIX_EXPERTS:
        lines += ["| layer | " + " | ".join(f"e{e}" for e in range(experts)) + " |",
                  "| ---: | " + " | ".join("---:" for _ in range(experts)) + " |"]
        lines += [f"| {layer} | " + " | ".join(f"{n:,}" for n in row) + " |" for layer, row in enumerate(tokens)]
    else:
        lines += ["| layer | tokens routed | least used (tokens) | most used (tokens) | unused experts |",
                  "| ---: | ---: | --- | --- | ---: |"]
        for layer, row in enumerate(tokens):
            low, high = int(np.argmin(row)), int(np.argmax(row))
            lines.append(f"| {layer} | {sum(row):,} | e{low} ({row[low]:,}) | e{high} ({row[high]:,}) | "
                         f"{sum(1 for n in row if n == 0)} |")
    return [*lines, "", *image]
