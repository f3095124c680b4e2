"""Parameters by component (embedding, attention, FFN, LM head, norms and other), before and after.

Counts come from the same tensor list the exporters write (PrunedCheckpoint.planned()), so the
report states what is in the files: a tied LM head is one tensor, the embedding, and counts 0
under "lm_head". Roles are those of the family tables (converter/arch/families.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from converter.prune import PrunedCheckpoint

COMPONENTS = ("embedding", "attention", "ffn", "lm_head", "norms_other")
LABELS = {"embedding": "embedding", "attention": "attention", "ffn": "FFN", "lm_head": "LM head",
          "norms_other": "norms & other"}
# Mixture of experts: every expert's FFN and a shared expert's count as FFN; the routers as "other".
FFN_ROLES = ("ffn_gate", "ffn_up", "ffn_gate_up", "ffn_down", "ffn_gate_up_exps", "ffn_down_exps", "ffn_gate_exp",
             "ffn_up_exp", "ffn_down_exp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")


def component_of(role: str | None) -> str:
    """Which component a tensor role belongs to; norms (attention q/k norms too) count as norms."""
    if role == "embed":
        return "embedding"
    if role == "lm_head":
        return "lm_head"
    if role in FFN_ROLES:
        return "ffn"
    if role is not None and role.startswith("attn_") and not role.endswith("norm"):
        return "attention"
    return "norms_other"


def _tally(items: Iterable[tuple[str | None, int]]) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for role, numel in items:
        out[component_of(role)] += numel
    out["total"] = sum(out[c] for c in COMPONENTS)
    return out


def params_by_component(pruned: PrunedCheckpoint) -> dict[str, dict[str, int]]:
    """{"before": {component: n, "total": n}, "after": {...}} for the pruned checkpoint."""
    planned = pruned.planned()
    return {"before": _tally((p.role, math.prod(p.source.shape)) for p in planned),
            "after": _tally((p.role, p.numel) for p in planned)}
