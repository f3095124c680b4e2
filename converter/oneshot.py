"""Score and plan inside `compact-convert IN OUT` when no --plan is given.

Takes the same options models as the stage commands (Budget, ScoreOptions), built by the CLI from
one set of flags or by library callers directly. The budget is checked before any scoring so a
missing or impossible budget fails in a second, not after minutes of forward passes; the built-in
corpus is announced loudly because the calibration domain decides most of the quality of a
vocabulary cut.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from converter.source import Source
from converter.plan import PrunePlan
from converter.report import ReportContext
from converter.score.autosplit import make_plan
from converter.score.budget import param_model
from converter.score.corpus import DEFAULT_WARNING, open_corpus
from converter.score.planner import report
from converter.score.scorer import score
from converter.score.scores import Scores
from converter.score.stage_options import Budget, ScoreOptions


def warn_default_corpus() -> None:
    bar = "!" * 78
    print(f"{bar}\nWARNING: {DEFAULT_WARNING}\n{bar}", file=sys.stderr)


def scores_for(source: Source, options: ScoreOptions, scores: Path | None = None,
               calib: Sequence[Path] | None = None, text_field: str = "text") -> tuple[Scores, str]:
    """Scores read from `scores`, or from scoring the model on `calib` (or the built-in corpus) now."""
    if scores is not None:
        return Scores.load(scores), str(scores)
    corpus = open_corpus(calib, text_field)
    if corpus.is_default:
        warn_default_corpus()
    return score(source, corpus, options), "scores computed now"


def one_shot_plan(source: Source, budget: Budget, options: ScoreOptions, scores: Path | None = None,
                  calib: Sequence[Path] | None = None, text_field: str = "text") -> tuple[PrunePlan, ReportContext]:
    """The plan `compact-convert IN OUT --target-ratio R [--calib ...]` exports, and the scores behind it
    for the export's report."""
    dims = source.spec.dims
    budget.check(dims.vocab, dims.ffn, dims.moe_ffn)
    found, where = scores_for(source, options, scores, calib, text_field)
    plan = make_plan(source, found, budget, where)
    report(plan, param_model(source))
    return plan, ReportContext(found, where)
