"""ShardWriter: stream tensors into one safetensors file without holding them.

`safetensors.save_file` wants every tensor of a shard in memory at once. Because a prune plan
fixes every output shape in advance, the header can be written first and each tensor's bytes
appended as the pruned stream yields them, so memory stays at one tensor whatever the shard size.
The writer checks that tensors arrive in the declared order with the declared size.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

import numpy as np

from converter.io.dtypes import DTYPE_SIZES


@dataclass(frozen=True)
class DeclaredTensor:
    """A tensor the writer expects: name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


class ShardWriter:
    """Writes one safetensors file: declare all tensors up front, then `write` each in order.

    Use as a context manager; `finalize()` (called on a clean exit) checks every tensor arrived
    and closes the file; durability is the staging folder's job (it fsyncs every file once, at the
    end, so the kernel can write back earlier shards while later ones are still being read).
    Writing out of order, twice, with the wrong size, or after finalizing is an error.
    """

    def __init__(self, path: Path, tensors: list[DeclaredTensor], metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self._declared = tensors
        self._metadata = metadata or {"format": "pt"}
        self._next = 0
        self._file: BinaryIO | None = None
        self._finalized = False

    def header_bytes(self) -> bytes:
        header: dict[str, object] = {"__metadata__": self._metadata}
        offset = 0
        for t in self._declared:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        return len(blob).to_bytes(8, "little") + blob

    def __enter__(self) -> ShardWriter:
        if self._file is not None or self._finalized:
            raise RuntimeError("ShardWriter can be entered only once")
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in finalize/__exit__
        self._file.write(self.header_bytes())
        return self

    def _expect(self, name: str, nbytes: int) -> BinaryIO:
        if self._file is None or self._finalized:
            raise RuntimeError("ShardWriter used outside an open writer")
        if self._next >= len(self._declared):
            raise RuntimeError(f"tensor '{name}' was not declared for {self.path.name}")
        expected = self._declared[self._next]
        if name != expected.name:
            raise RuntimeError(f"tensor '{name}' written out of order; {self.path.name} expects '{expected.name}' next")
        if nbytes != expected.nbytes:
            raise RuntimeError(f"tensor '{name}' has {nbytes} bytes, declared {expected.nbytes}")
        self._next += 1
        return self._file

    def write(self, name: str, data: np.ndarray | bytes | memoryview) -> None:
        """Append the bytes of the next declared tensor."""
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        f = self._expect(name, view.nbytes)
        start = os.lseek(f.fileno(), 0, os.SEEK_CUR)
        while view.nbytes:
            written = f.write(view)
            view = view[written:]
        self._start_writeback(f.fileno(), start)

    def write_with(self, name: str, nbytes: int, copy: Callable[[int], None]) -> None:
        """Append the next tensor by handing the file descriptor to `copy` (e.g. a kernel copy)."""
        f = self._expect(name, nbytes)
        before = os.lseek(f.fileno(), 0, os.SEEK_CUR)
        copy(f.fileno())
        if os.lseek(f.fileno(), 0, os.SEEK_CUR) - before != nbytes:
            raise RuntimeError(f"tensor '{name}' copy wrote the wrong number of bytes")
        self._start_writeback(f.fileno(), before)

    @staticmethod
    def _start_writeback(fd: int, start: int) -> None:
        """Let the disk write this tensor now, while the next is read, instead of all at the final fsync.

        On Linux, POSIX_FADV_DONTNEED on dirty pages starts their writeback without waiting for it
        (and drops them from the cache once clean, which a one-pass rewrite never reads again).
        """
        if hasattr(os, "posix_fadvise"):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def finalize(self) -> Path:
        if self._file is None or self._finalized:
            raise RuntimeError("ShardWriter.finalize called twice or before entering")
        if self._next != len(self._declared):
            missing = self._declared[self._next].name
            raise RuntimeError(f"{self.path.name} is incomplete: tensor '{missing}' was never written")
        self._file.close()
        self._finalized = True
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and not self._finalized:
            self.finalize()
        elif self._file is not None and not self._file.closed:
            self._file.close()


def save_whole_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    """Write a safetensors file that fits in memory (scores, a plan's refit) atomically.

    It goes to a hidden temporary name beside `path` and is renamed over it only when complete,
    so a crash leaves no half-written file under the real name. OSError propagates to the caller,
    which knows what the file is.
    """
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
