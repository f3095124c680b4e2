"""Score and plan inside `compact-convert IN OUT` when no --plan is given.

The budget is checked before any scoring so a missing or impossible budget fails in a second,
not after minutes of forward passes; the built-in corpus is announced loudly because the
calibration domain decides most of the quality of a vocabulary cut.
"""
from __future__ import annotations

import argparse
import sys

from converter.source import Source
from converter.plan import PrunePlan
from converter.report import ReportContext
from converter.score.autosplit import Budget, make_plan
from converter.score.scorer import ScoreOptions, score
from converter.score.corpus import DEFAULT_WARNING, open_corpus
from converter.score.planner import report
from converter.score.scores import Scores


def warn_default_corpus() -> None:
    bar = "!" * 78
    print(f"{bar}\nWARNING: {DEFAULT_WARNING}\n{bar}", file=sys.stderr)


def budget_from_args(args: argparse.Namespace) -> Budget:
    return Budget(vocab_size=args.vocab_size, intermediate_size=args.intermediate_size,
                  target_ratio=args.target_ratio, method=args.method,
                  ffn_multiple=getattr(args, "ffn_multiple", 32), focus=getattr(args, "focus", 0.0),
                  seed=getattr(args, "seed", 0), splits=getattr(args, "splits", 6),
                  keep_reserved=getattr(args, "keep_reserved", False), device=args.device,
                  layerwise=getattr(args, "layer_by_layer", None), refit=getattr(args, "refit", False))


def scores_from_args(args: argparse.Namespace, source: Source) -> tuple[Scores, str]:
    """Scores from --scores, or from scoring the model on --calib (or the built-in corpus) now."""
    path = getattr(args, "scores", None)
    if path is not None:
        return Scores.load(path), str(path)
    corpus = open_corpus(args.calib, getattr(args, "text_field", "text"))
    if corpus.is_default:
        warn_default_corpus()
    options = ScoreOptions(calib_tokens=getattr(args, "calib_tokens", ScoreOptions.calib_tokens),
                           device=args.device, layerwise=getattr(args, "layer_by_layer", None),
                           progress=getattr(args, "progress", True), gram=getattr(args, "refit", False),
                           predict_tokens=getattr(args, "predict_tokens", ScoreOptions.predict_tokens))
    return score(source, corpus, options), "scores computed now"


def plan_from_args(args: argparse.Namespace, source: Source) -> tuple[PrunePlan, ReportContext]:
    """The plan `compact-convert IN OUT --target-ratio R [--calib ...]` exports, and the scores behind it
    for the export's report."""
    budget = budget_from_args(args)
    dims = source.spec.dims
    budget.check(dims.vocab, dims.ffn)
    scores, where = scores_from_args(args, source)
    plan = make_plan(source, scores, budget, where)
    from converter.score.budget import param_model

    report(plan, param_model(source))
    return plan, ReportContext(scores, where)
