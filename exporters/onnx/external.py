"""One external data file per graph, written tensor by tensor with mmap-friendly offsets.

onnxruntime memory-maps an external initializer on CPU only when its offset is aligned (it
documents 4 KiB outside Windows, 64 KiB on Windows), otherwise it copies it onto the heap.
Tensors of 1 MiB or more therefore start on a 4 KiB boundary, onnxruntime's own
`on_disk_alignment_factor` default (a 64 KiB boundary would cost ~2% of a small model's file);
smaller ones on 64 bytes. onnx's own `save_model` does not align, so every graph this exporter
writes (traced or converted) goes through this writer.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

ALIGN_THRESHOLD = 1 << 20
LARGE_ALIGN = 1 << 12
SMALL_ALIGN = 64
INLINE_LIMIT = 1024


class ExternalData:
    """Appends tensor bytes to one file; returns TensorProtos that point into it. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.file = path.open("wb")

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def add(self, name: str, data_type: int, dims: list[int], raw: bytes | memoryview) -> TensorProto:
        size = len(raw) if isinstance(raw, bytes) else raw.nbytes
        align = LARGE_ALIGN if size >= ALIGN_THRESHOLD else SMALL_ALIGN
        pad = -self.offset % align
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(raw)
        tensor = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += size
        return tensor


def save_with_external_data(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Save a fully loaded model: initializers of 1 KiB or more move to `data_name` beside `path`."""
    data_path = path.parent / data_name
    data_path.unlink(missing_ok=True)
    with ExternalData(data_path) as data:
        for tensor in model.graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                raise RuntimeError(f"initializer {tensor.name} still points at external data; load it first")
            if not tensor.HasField("raw_data"):
                array = onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
            if len(tensor.raw_data) < INLINE_LIMIT:
                continue
            external = data.add(tensor.name, tensor.data_type, list(tensor.dims), tensor.raw_data)
            tensor.CopyFrom(external)
    onnx.save_model(model, path)
