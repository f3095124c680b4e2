"""write_report: draw the plots, then write report.json and report.md, last, into the staging folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from converter.prune import PrunedCheckpoint
from converter.report.collect import Collected, collect, finish_sizes
from converter.report.context import ReportContext
from exporters.options import ExportOptions


def _plots(collected: Collected, staged: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Draw what the data allows; returns (made: name -> file, skipped: name -> reason)."""
    from converter.report import plots

    data = collected.data
    made: dict[str, str] = {}
    skipped: dict[str, str] = {}
    made["parameters"] = plots.plot_parameters(data["parameters"], staged / plots.PARAMS_PNG).name
    splits = data["auto_split"]
    if collected.coverage is not None:
        candidates = [r["vocab"] for r in splits.get("candidates", [])]
        made["coverage"] = plots.plot_coverage(collected.coverage, staged / plots.COVERAGE_PNG, candidates).name
    else:
        skipped["coverage"] = data["calibration"]["reason"]
    if collected.importance is not None:
        made["ffn_importance"] = plots.plot_importance(collected.importance, staged / plots.IMPORTANCE_PNG).name
    else:
        skipped["ffn_importance"] = data["ffn_importance"]["reason"]
    if splits["ran"] and any(r["bits_per_byte"] is not None for r in splits["candidates"]):
        made["auto_split"] = plots.plot_splits(splits["candidates"], staged / plots.SPLITS_PNG).name
    else:
        skipped["auto_split"] = splits.get("reason", "no candidate was measured")
    return made, skipped


def write_report(pruned: PrunedCheckpoint, fmt: str, options: ExportOptions, context: ReportContext | None,
                 staged: Path) -> list[Path]:
    """Write the plots, report.json and report.md into `staged`; returns the paths written."""
    from converter.report.markdown import render

    collected = collect(pruned, fmt, options, context or ReportContext())
    data = collected.data
    try:
        from converter.report.plots import style

        with style():
            made, skipped = _plots(collected, staged)
    except ImportError as exc:
        print(f"warning: no plots in the report: {exc} (pip install 'matplotlib>=3.8')", file=sys.stderr)
        made, skipped = {}, {"all": f"matplotlib is not installed ({exc})"}
    data["plots"] = {"made": made, "not_made": skipped}
    finish_sizes(data, staged)
    json_path = staged / "report.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path = staged / "report.md"
    md_path.write_text(render(data), encoding="utf-8")
    return [*(staged / name for name in made.values()), json_path, md_path]
