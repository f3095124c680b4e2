"""COMPACT scoring and budget planning: from a model and a corpus to a prune plan.

`score(source, corpus, options)` counts every token of a calibration corpus and records FFN
channel importance (act² at the input of each down_proj, per bucket of token-frequency rank)
on a sample, on GPU or CPU, whole or layer by layer, under torch.distributed or not; the result
is an additive `Scores` file. `make_plan(source, scores, budget)` turns scores and a budget
(exact sizes or a target ratio with an automatically chosen split) into a PrunePlan, with
`budget.refit` also refitting the kept down_proj columns by least squares (converter.score.refit_solver).
"""
from __future__ import annotations

import importlib
from typing import Any

# Re-exports resolve on first use: the planner and the scores file are plain numpy, and importing
# the package must not pull in torch (seconds of start-up) for an export that only reads scores.
_EXPORTS = {
    "Budget": "stage_options", "make_plan": "autosplit", "BucketLayout": "buckets", "ParamModel": "budget",
    "param_model": "budget", "ScoreOptions": "stage_options", "score": "scorer", "Corpus": "corpus",
    "open_corpus": "corpus", "Scores": "scores", "merge": "scores",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'converter.score' has no attribute {name!r}")
    return getattr(importlib.import_module(f"converter.score.{_EXPORTS[name]}"), name)
