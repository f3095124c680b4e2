"""The report every export writes last into its output: report.json, report.md and PNG plots.

`converter.report.write.ReportWriter` wraps the exporter: it draws the plots in a worker thread
while the tensors are written, and writes report.json and report.md after the exporter returns and
before the staging folder is moved into place, so the report is the same for every format and
lists the real sizes of what was written. This package module stays import-light (pipeline imports ReportContext
from it; the writer, which needs the scoring code, is imported when a report is written).
"""
from __future__ import annotations

from converter.report.context import ReportContext

__all__ = ["ReportContext"]
