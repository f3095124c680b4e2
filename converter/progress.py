"""Progress bars that cost nothing when switched off.

tqdm's import reads package metadata (tens of milliseconds, a few percent of a one-gigabyte
rewrite); with `--no-progress`, as in scripted pipelines, no stage should pay it. Scoring and
every exporter take their bars from here.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any


class NoBar:
    """The part of tqdm's interface the stages use, doing nothing."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, text: str = "") -> None:
        return None


def progress_bar(enabled: bool, **options: Any) -> Any:
    """A tqdm bar with `options` when enabled, else a NoBar; use as a context manager."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm

    return tqdm(**options)
