"""The rewrite's buffer pool: buffers come back, views resolve to their buffer, scratch is per
thread, memory stays bounded."""
from __future__ import annotations

import numpy as np

from converter.io.buffers import BufferPool


def test_a_given_back_buffer_is_reused_for_the_same_size_only() -> None:
    pool = BufferPool()
    first = pool.take(4096)
    pool.give(first.reshape(64, 16, 4))  # the writer holds a shaped view
    assert pool.take(4096) is first
    assert pool.take(4096) is not first  # it was taken again, so the pool is empty
    pool.give(first)
    assert pool.take(2048) is not first


def test_the_pool_keeps_a_few_buffers_per_size_and_ignores_foreign_arrays() -> None:
    pool = BufferPool(keep_per_size=2)
    buffers = [pool.take(1024) for _ in range(3)]
    for b in buffers:
        pool.give(b)
    pool.give(buffers[0])  # given twice: still kept once
    taken = {id(pool.take(1024)) for _ in range(3)}
    assert len(taken & {id(b) for b in buffers}) == 2
    floats = np.zeros(256, dtype=np.float32)
    pool.give(floats)
    assert pool.take(1024) is not floats


def test_scratch_is_one_buffer_per_thread_grown_to_the_largest_request() -> None:
    import threading

    pool = BufferPool()
    small = pool.scratch(1000)
    assert pool.scratch(800).base is small.base  # a smaller request reuses it
    large = pool.scratch(5000)
    assert large.size == 5000 and large.base is not small.base
    assert pool.scratch(1000).base is large.base
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(pool.scratch(1000).base))
    thread.start()
    thread.join()
    assert other[0] is not large.base
