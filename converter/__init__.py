"""compact-convert: training-free vocabulary and FFN pruning that rewrites checkpoints.

The package is split by stage (see DESIGN.md): `io` reads checkpoints lazily, `arch` knows
which tensor plays which role, `plan` is the frozen prune plan, `prune` streams pruned tensors,
and `exporters` (a sibling package) writes the result.
"""
from __future__ import annotations

# The single source of the version: pyproject.toml reads it from here (setuptools' `attr:`), and
# a literal costs nothing at start-up, where importlib.metadata would add tens of milliseconds to
# every run of the command.
__version__ = "0.1.0"
