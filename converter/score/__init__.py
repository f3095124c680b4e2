"""COMPACT scoring and budget planning: from a model and a corpus to a prune plan.

`score(source, corpus, options)` counts every token of a calibration corpus and records FFN
channel importance (act² at the input of each down_proj, per bucket of token-frequency rank)
on a sample, on GPU or CPU, whole or layer by layer, under torch.distributed or not; the result
is an additive `Scores` file. `make_plan(source, scores, budget)` turns scores and a budget
(exact sizes or a target ratio with an automatically chosen split) into a PrunePlan.
"""
from __future__ import annotations

from converter.score.autosplit import Budget, make_plan
from converter.score.buckets import BucketLayout
from converter.score.budget import ParamModel, param_model
from converter.score.collect import ScoreOptions, score
from converter.score.corpus import Corpus, open_corpus
from converter.score.scores import Scores, merge

__all__ = ["BucketLayout", "Budget", "Corpus", "ParamModel", "ScoreOptions", "Scores", "make_plan", "merge",
           "open_corpus", "param_model", "score"]
