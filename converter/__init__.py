"""compact-convert: training-free vocabulary and FFN pruning that rewrites checkpoints.

The package is split by stage (see DESIGN.md): `io` reads checkpoints lazily, `arch` knows
which tensor plays which role, `plan` is the frozen prune plan, `prune` streams pruned tensors,
and `exporters` (a sibling package) writes the result.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("compact-convert")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
