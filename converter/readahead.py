"""Overlap reading the next tensor with writing the current one.

A rewrite alternates disk reads, a numpy gather and disk writes; done strictly in turn, the disk
sits idle while numpy gathers and vice versa. `depth` worker threads loading up to `depth` items
ahead (preadv and numpy's take release the GIL) keep both busy, and bound memory to depth + 1
tensors in flight (the HF writer uses 2; its gather buffers are recycled, see converter.io.buffers).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Sequence[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R]]:
    """Yield (item, load(item)) in order while `depth` worker threads load up to `depth` items ahead."""
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="read-ahead") as pool:
        pending: deque[tuple[T, Future[R]]] = deque()
        upcoming = iter(items)
        try:
            for item in upcoming:
                pending.append((item, pool.submit(load, item)))
                if len(pending) > depth:
                    yield _next_done(pending)
            while pending:
                yield _next_done(pending)
        finally:
            for _, future in pending:
                future.cancel()


def _next_done(pending: deque[tuple[T, Future[R]]]) -> tuple[T, R]:
    """The oldest item and its loaded value, leaving no reference to it in the generator's frame (a local
    there would keep the previous value alive while the next one loads: one more item in flight)."""
    head, future = pending.popleft()
    return head, future.result()
