"""The conversion as library calls: open and check the input, settle the plan, export.

The CLI is a thin shell over these functions, and tests call them directly. Everything that can
be checked from headers (architecture, shapes, plan, output location) is checked before the
staging folder is created.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from converter.errors import ConvertError
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.report import ReportContext
from converter.settle import settle_plan
from converter.source import Source
from exporters.options import ExportOptions
from exporters.registry import exporter_for
from exporters.staging import StagedOutput, check_output_location


def export(source: Source, plan: PrunePlan, out_dir: Path, fmt: str = "hf", options: ExportOptions | None = None,
           force: bool = False, keep_reserved: bool = False, report: ReportContext | None = None) -> list[Path]:
    """Prune `source` with `plan` and write format `fmt` to out_dir, atomically, with its report.

    `report` carries the scores the plan came from, for the report's coverage and importance plots,
    and for the GGUF's importance matrix when they hold matmul input sums.
    """
    from converter.report.write import ReportWriter

    options = options or ExportOptions()
    if options.importance is None and report is not None and report.scores is not None:
        options = replace(options, importance=report.scores.matmul)
    check_output_location(out_dir, source.folder, force)
    exporter = exporter_for(fmt)
    final, tokenizer = settle_plan(source, plan, keep_reserved)
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, final)
    try:
        with StagedOutput(out_dir, force=force) as staged:
            with ReportWriter(pruned, fmt, options, report, staged) as report_writer:
                written = exporter(pruned, tokenizer, staged, options)
                written += report_writer.finish()
    except OSError as exc:
        where = exc.filename or out_dir
        raise ConvertError(f"writing the output failed ({exc.strerror or exc}); nothing was written", where) from exc
    return [out_dir / p.relative_to(staged) for p in written]
