"""What the export step cannot see for itself but the report needs: the scores behind the plan.

The one-shot path (`compact-convert IN OUT --target-ratio ...`) and `--plan P --scores S` pass
the Scores they planned from; a bare `--plan` passes nothing, and the report says which plots it
could not draw and why. Passed explicitly down to pipeline.export, never through a global.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from converter.score.scores import Scores


@dataclass(frozen=True)
class ReportContext:
    """The scores the plan came from (None when only a plan was given), and where they came from."""

    scores: Scores | None = None
    scores_origin: str | None = None
