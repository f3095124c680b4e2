"""The report's lifecycle: plots drawn beside the export, report.json and report.md written last.

Everything the plots show (parameters by component, coverage, importance, auto-split) is known
before the first tensor is written, so they are drawn in a worker thread while the exporter
streams tensors (matplotlib's import and drawing cost about a second, as much as rewriting a
gigabyte). Only the file sizes need the finished export: `finish()` waits for the plots, then
writes the two report files into the staging folder.
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from converter.prune import PrunedCheckpoint
from converter.report.collect import Collected, collect, finish_sizes
from converter.report.context import ReportContext
from exporters.options import ExportOptions

Drawn = tuple[dict[str, str], dict[str, str]]  # (made: name -> file, not made: name -> reason)


def _plots(collected: Collected, staged: Path) -> Drawn:
    """Draw what the data allows."""
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


def _draw(collected: Collected, staged: Path) -> Drawn:
    try:
        from converter.report.plots import style

        with style():
            return _plots(collected, staged)
    except ImportError as exc:
        print(f"warning: no plots in the report: {exc} (pip install 'matplotlib>=3.8')", file=sys.stderr)
        return {}, {"all": f"matplotlib is not installed ({exc})"}


class ReportWriter:
    """Use as a context manager around the exporter; `finish()` after it returned writes the report.

    Leaving the block always waits for the plot thread, so a failed or interrupted export never
    has a thread still writing into a staging folder that is being removed.
    """

    def __init__(self, pruned: PrunedCheckpoint, fmt: str, options: ExportOptions, context: ReportContext | None,
                 staged: Path) -> None:
        self._collected = collect(pruned, fmt, options, context or ReportContext())
        self._staged = staged
        self._pool: ThreadPoolExecutor | None = None
        self._drawn: Future[Drawn] | None = None
        self._finished = False

    def __enter__(self) -> ReportWriter:
        if self._pool is not None:
            raise RuntimeError("ReportWriter can be entered only once")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-plots")
        self._drawn = self._pool.submit(_draw, self._collected, self._staged)
        return self

    def finish(self) -> list[Path]:
        """Wait for the plots, then write report.json and report.md; returns every report file."""
        if self._drawn is None or self._finished:
            raise RuntimeError("ReportWriter.finish called outside the block or twice")
        made, skipped = self._drawn.result()
        self._finished = True
        data = self._collected.data
        data["plots"] = {"made": made, "not_made": skipped}
        finish_sizes(data, self._staged)
        json_path = self._staged / "report.json"
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        from converter.report.markdown import render

        md_path = self._staged / "report.md"
        md_path.write_text(render(data), encoding="utf-8")
        return [*(self._staged / name for name in made.values()), json_path, md_path]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

