"""The report's lifecycle: plots drawn beside the export, report.json and report.md written last.

Everything the plots show (parameters by component, coverage, importance, auto-split, retention) is known
before the first tensor is written, so they are drawn while the exporter streams tensors
(matplotlib's import and drawing cost about a second of CPU, as much as rewriting a gigabyte).
On Linux they are drawn in a forked child process, so that second runs on another core instead
of taking the interpreter lock from the exporter between its system calls; elsewhere in a worker
thread. Only the file sizes need the finished export: `finish()` waits for the plots, then
writes the two report files into the staging folder. With `ExportOptions.report_plots` off
(`--no-report`) no plot is drawn and nothing is forked; report.json and report.md are written all
the same.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from converter.prune import PrunedCheckpoint
from converter.report.contents import Collected, collect, finish_sizes
from converter.report.context import ReportContext
from converter.report.output_types import output_types_section
from exporters.options import ExportOptions

Drawn = tuple[dict[str, str], dict[str, str]]  # (made: name -> file, not made: name -> reason)
PLOTS_OFF = "plots turned off (--no-report)"
NO_CANDIDATES = ("no auto-split candidate has both held-out bits per byte and a retention measurement to plot "
                 "(exact sizes, or only one split met the budget); the chosen plan's figures are above")


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
    use = data.get("expert_use")
    if use is not None and use["available"]:
        made["expert_use"] = plots.plot_expert_use(use["tokens"], staged / plots.EXPERT_USE_PNG).name
    elif use is not None:
        skipped["expert_use"] = use["reason"]
    retention = data["retention"]
    if not retention["measured"]:
        skipped["retention"] = retention["reason"]
    elif any(r["bits_per_byte"] is not None and r.get("retention", {}).get("measured")
             for r in splits.get("candidates", [])):
        made["retention"] = plots.plot_retention(splits["candidates"], staged / plots.RETENTION_PNG).name
    else:
        skipped["retention"] = NO_CANDIDATES
    return made, skipped


def _draw(collected: Collected, staged: Path) -> Drawn:
    try:
        from converter.report.plots import style

        with style():
            return _plots(collected, staged)
    except ImportError as exc:
        print(f"warning: no plots in the report: {exc} (pip install 'matplotlib>=3.8')", file=sys.stderr)
        return {}, {"all": f"matplotlib is not installed ({exc})"}


class PlotProcess:
    """Draws the plots in a forked child; `result()` returns what `_draw` returned there.

    The child inherits the collected numbers (nothing is pickled), writes the PNGs into the
    staging folder, sends (made, skipped) or the error back through a pipe as JSON and leaves with
    os._exit, running none of the parent's exit handlers. It ignores Ctrl-C: the parent, which
    owns the staging folder, stops it (`stop()`) before that folder is removed.
    """

    def __init__(self, collected: Collected, staged: Path) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: draw, report, leave
            os.close(read_end)
            _child(collected, staged, write_end)
        os.close(write_end)
        self._pipe = os.fdopen(read_end, "rb")

    def result(self) -> Drawn:
        message = json.loads(self._pipe.read() or b'{"error": "the plot process died"}')
        self._pipe.close()
        os.waitpid(self.pid, 0)
        self.pid = 0
        if "oserror" in message:
            number, text, filename = message["oserror"]
            raise OSError(number, text, filename)
        if "error" in message:
            raise RuntimeError(f"drawing the report's plots failed: {message['error']}")
        return message["made"], message["skipped"]

    def stop(self) -> None:
        """Kill the child if it still runs (an export that failed or was interrupted)."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            self._pipe.close()


def _child(collected: Collected, staged: Path, write_end: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    status = 0
    try:
        made, skipped = _draw(collected, staged)
        message: dict[str, object] = {"made": made, "skipped": skipped}
    except OSError as exc:
        message = {"oserror": [exc.errno, exc.strerror, exc.filename and str(exc.filename)]}
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        message = {"error": f"{type(exc).__name__}: {exc}"}
        status = 1
    try:
        os.write(write_end, json.dumps(message).encode())
    finally:
        os._exit(status)


def use_fork() -> bool:
    """Fork only on Linux, where it is cheap and safe for a child that runs Python and exits."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class _Nothing:
    """The plots' result when none are drawn."""

    def result(self) -> Drawn:
        return {}, {"all": PLOTS_OFF}


class ReportWriter:
    """Use as a context manager around the exporter; `finish()` after it returned writes the report.

    Leaving the block always waits for the plot thread, or kills the plot process, so a failed or
    interrupted export never has anything still writing into a staging folder being removed.
    """

    def __init__(self, pruned: PrunedCheckpoint, fmt: str, options: ExportOptions, context: ReportContext | None,
                 staged: Path) -> None:
        self._collected = collect(pruned, fmt, options, context or ReportContext())
        self._fmt, self._pruned, self._options = fmt, pruned, options
        self._staged = staged
        self._plots = options.report_plots
        self._pool: ThreadPoolExecutor | None = None
        self._drawn: Future[Drawn] | PlotProcess | _Nothing | None = None
        self._finished = False

    def __enter__(self) -> ReportWriter:
        if self._drawn is not None:
            raise RuntimeError("ReportWriter can be entered only once")
        if not self._plots:
            self._drawn = _Nothing()
        elif use_fork():
            self._drawn = PlotProcess(self._collected, self._staged)
        else:
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
        data["output_types"] = output_types_section(self._fmt, self._staged, self._pruned, self._options)
        json_path = self._staged / "report.json"
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        from converter.report.markdown import render

        md_path = self._staged / "report.md"
        md_path.write_text(render(data), encoding="utf-8")
        return [*(self._staged / name for name in made.values()), json_path, md_path]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(self._drawn, PlotProcess):
            self._drawn.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

