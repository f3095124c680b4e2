"""Gather everything report.json states: command, source, sizes, parameters, coverage, auto-split, retention.

Only numbers that are the same on every run of the same command go in (no timings, dates or
host names), so reports compare byte for byte across runs. Sizes are os.stat sizes of the
files as they lie in the staging folder when the report is written, last.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter import __version__
from converter.prune import PrunedCheckpoint
from converter.report.calibration import CoverageCurve, ImportanceMap, coverage_section, importance_section
from converter.report.components import params_by_component
from converter.report.context import ReportContext
from converter.report.expert_use import expert_use_section
from converter.report.retention import retention_section
from converter.report.splits import auto_split_section
from exporters.options import ExportOptions

REPORT_FILES = ("report.json", "report.md")
NO_SCORES = ("no scores came with the plan; pass --scores scores.safetensors beside --plan (the file the plan was "
             "made from) to get this section")


@dataclass(frozen=True)
class Collected:
    """report.json's content, and the arrays the scores-based plots draw."""

    data: dict[str, Any]
    coverage: CoverageCurve | None
    importance: ImportanceMap | None


def file_sizes(folder: Path, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every regular file under `folder` (relative POSIX path, bytes), sorted by path."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in skip:
            out.append({"path": rel, "bytes": path.stat().st_size})
    return out


def _source_section(pruned: PrunedCheckpoint) -> dict[str, Any]:
    folder = pruned.source.folder
    spec = pruned.spec
    weights = [{"path": os.path.relpath(f, folder), "bytes": f.stat().st_size} for f in pruned.source.files]
    top = [p for p in sorted(folder.iterdir()) if p.is_file()]
    return {"folder": str(folder), "architecture": spec.architecture, "family": spec.family,
            "fingerprint": pruned.plan.source_fingerprint or pruned.source.fingerprint(),
            "tied_embeddings": spec.tied_embeddings, "layers": spec.dims.layers, "hidden_size": spec.dims.hidden,
            "weight_files": weights, "weights_bytes": sum(w["bytes"] for w in weights),
            "folder_bytes": sum(p.stat().st_size for p in top)}


def _candidate_params(pruned: PrunedCheckpoint) -> Callable[..., int]:
    """params(vocab, ffn[, moe]) of this model, to show each auto-split candidate's size."""
    from converter.source import Source
    from converter.score.budget import param_model

    return param_model(Source(pruned.source.folder, pruned.source, pruned.spec)).params


def collect(pruned: PrunedCheckpoint, fmt: str, options: ExportOptions, context: ReportContext) -> Collected:
    """What the report says about exporting `pruned` as `fmt` (sizes are added by finish_sizes)."""
    plan = pruned.plan
    meta = plan.metadata
    params = params_by_component(pruned)
    before, after = params["before"]["total"], params["after"]["total"]
    data: dict[str, Any] = {
        "compact_convert_version": __version__,
        "command_line": options.command_line or None,
        "format": fmt,
        "outtype": options.outtype,
        "source": _source_section(pruned),
        "plan": {"method": meta.get("method"), "source_fingerprint": plan.source_fingerprint,
                 "ffn_refit": None if plan.refit is None else {"method": "least_squares", "ridge": plan.refit.ridge},
                 "vocab_size": {"before": pruned.spec.dims.vocab, "after": plan.vocab_size},
                 "intermediate_size": {"before": pruned.spec.dims.ffn, "after": plan.intermediate_size},
                 "vocab_requested": meta.get("vocab_requested", meta.get("tokens_requested")),
                 "tokens_added_by_rules": meta.get("vocab_added_by_rules", meta.get("tokens_added_by_rules"))},
        "parameters": {**params, "removed": before - after,
                       "removed_fraction": round(1 - after / before, 6) if before else 0.0},
    }
    curve = imp = None
    scores = context.scores
    if scores is not None:
        coverage, curve = coverage_section(scores, plan)
        importance, imp = importance_section(scores, plan)
        coverage["scores"] = context.scores_origin
    else:
        coverage = {"available": False, "reason": NO_SCORES}
        if "calibration_coverage" in meta:
            coverage["kept_vocab_coverage_from_plan"] = meta["calibration_coverage"]
        importance = {"available": False, "reason": NO_SCORES}
    data["calibration"] = coverage
    data["ffn_importance"] = importance
    data["auto_split"] = auto_split_section(plan, _candidate_params(pruned))
    dims = pruned.spec.dims
    if dims.experts:
        data["plan"]["moe_intermediate_size"] = {"before": dims.moe_ffn, "after": plan.moe_intermediate_size}
        data["expert_use"] = expert_use_section(plan, dims.layers, dims.experts, scores)
    data["retention"] = retention_section(plan)
    return Collected(data, curve, imp)


def finish_sizes(data: dict[str, Any], staged: Path) -> None:
    """Restat the output after the plots are written, so the PNGs are listed with their real sizes."""
    files = file_sizes(staged, REPORT_FILES)
    data["output"] = {"files": files, "total_bytes": sum(f["bytes"] for f in files),
                      "note": "report.json and report.md are not listed"}
