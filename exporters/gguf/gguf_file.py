"""Write a GGUF file with gguf-py's GGUFWriter, streaming tensor data in bounded chunks.

Every tensor is declared first with its final shape and type (`add_tensor_info`), the header,
metadata and tensor infos are written, and then each tensor's bytes go out in declaration order
through `write_tensor_data`. A worker thread reads and converts the next chunks while the main
thread writes (preadv, torch conversions and file writes all release the GIL), and at most
PREFETCH chunks wait in between, so peak memory is a few chunks whatever the model's size.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from gguf import GGUFWriter

from converter.progress import progress_bar
from converter.prune import PrunedCheckpoint
from exporters.gguf.hparams import Kv
from exporters.gguf.tensors import GgufTensor, tensor_chunks

PREFETCH = 2
_DONE = object()


def prefetched(items: Iterable[Any], depth: int = PREFETCH) -> Generator[Any, None, None]:
    """Iterate `items` in a worker thread, `depth` ahead; its exceptions re-raise here."""
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            box.put((False, exc))

    worker = threading.Thread(target=work, name="gguf-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


class _ChunkedData:
    """The part of an ndarray GGUFWriter.write_tensor_data uses (nbytes, tofile), fed chunk by chunk.

    gguf-py writes an array with `tensor.tofile(fout)` after checking `tensor.nbytes` against the
    declared size (its own lazy tensors rely on the same contract); this writes the tensor's chunks
    as they arrive instead of concatenating them first.
    """

    def __init__(self, tensor: GgufTensor, chunks: Iterator[np.ndarray], bar: Any) -> None:
        self.nbytes = tensor.nbytes
        self._tensor = tensor
        self._chunks = chunks
        self._bar = bar

    def tofile(self, fout: IO[bytes]) -> None:
        written = 0
        while written < self.nbytes:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            chunk.tofile(fout)
            written += chunk.nbytes
            self._bar.update(chunk.nbytes)
        if written != self.nbytes:
            raise RuntimeError(f"{self._tensor.name}: encoded {written} bytes, declared {self.nbytes}")


def write_gguf(path: Path, arch: str, kvs: Sequence[Kv], tensors: Sequence[GgufTensor], pruned: PrunedCheckpoint,
               progress: bool = False) -> Path:
    """Write `path` (one file, no splits); the caller removes it if this raises."""
    writer = GGUFWriter(path, arch)
    try:
        for kv in kvs:
            writer.add_key_value(kv.key, kv.value, kv.vtype, kv.sub_type)
        for t in tensors:
            writer.add_tensor_info(t.name, t.byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        chunks = prefetched(chunk for t in tensors for chunk in tensor_chunks(pruned, t))
        try:
            with progress_bar(progress, total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True,
                              desc="gguf") as bar:
                for t in tensors:
                    writer.write_tensor_data(_ChunkedData(t, chunks, bar))  # type: ignore[arg-type]
        finally:
            chunks.close()
    finally:
        writer.close()
    return path
