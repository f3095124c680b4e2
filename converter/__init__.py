"""compact-convert: training-free vocabulary and FFN pruning that rewrites checkpoints.

The package is split by stage (the layering is described in the team's DESIGN.md, kept beside the
repository in shared/, and enforced by tests/test_layering.py): `io` reads checkpoints lazily,
`arch` knows which tensor plays which role, `plan` is the frozen prune plan, `source` is the opened
input, `score` computes importance, `tokenizer` rewrites tokenizers, `prune` streams pruned
tensors, `exporters` (a sibling package) writes the result, and `pipeline` and `commands` tie
the stages together.
"""
from __future__ import annotations

# The single source of the version: pyproject.toml reads it from here (setuptools' `attr:`), and
# a literal costs nothing at start-up, where importlib.metadata would add tens of milliseconds to
# every run of the command.
__version__ = "0.1.0"
