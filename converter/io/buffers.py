"""BufferPool: hand the same few output buffers round between the reading threads and the writer.

Every layer of a pruned model has tensors of the same few shapes, so a rewrite that gathers kept
rows or columns into a fresh array per tensor asks the kernel for, faults in and zeroes the same
tens of megabytes hundreds of times (perf: a fifth of a row-gathering rewrite's CPU time). The
writer gives each buffer back once its bytes are written, and the next tensor of that size reuses
it. Only a few buffers per size are kept, so memory stays at what is in flight.
"""
from __future__ import annotations

import threading

import numpy as np


class BufferPool:
    """Thread-safe free lists of uint8 arrays by size; `take` reuses one or makes one."""

    def __init__(self, keep_per_size: int = 4) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._keep = keep_per_size
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, array: np.ndarray) -> None:
        """Return a buffer from `take` (or any view of it) once nothing reads it any more."""
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.dtype != np.uint8 or base.ndim != 1 or not base.flags.owndata:
            return
        with self._lock:
            free = self._free.setdefault(base.nbytes, [])
            if len(free) < self._keep and not any(b is base for b in free):
                free.append(base)
