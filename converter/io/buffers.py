"""BufferPool: reuse the buffers of one rewrite instead of a fresh array per tensor.

Every layer of a pruned model has tensors of the same few shapes, so a rewrite that gathers kept
rows or columns into fresh arrays asks the kernel for, faults in and zeroes the same tens of
megabytes hundreds of times (perf: a fifth of a row-gathering rewrite's CPU time). A pool lives
as long as one rewrite: the bytes a tensor is gathered from go into one scratch buffer per reading
thread, and the gathered outputs come from free lists that the writer gives each buffer back to
once written. Only a few buffers per size are kept, so memory stays at what is in flight; callers
without a pool (scoring, GGUF, ONNX) get fresh arrays that are freed as before.
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
        self._scratch = threading.local()

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

    def scratch(self, nbytes: int) -> np.ndarray:
        """This thread's reusable buffer of `nbytes`, for bytes gathered from and then dropped."""
        buf: np.ndarray | None = getattr(self._scratch, "buf", None)
        if buf is None or buf.size < nbytes:
            self._scratch.buf = None  # drop the old one before allocating the larger one
            buf = self._scratch.buf = np.empty(nbytes, dtype=np.uint8)
        return buf[:nbytes]
