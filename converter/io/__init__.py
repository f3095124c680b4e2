"""Reading and writing safetensors checkpoints without loading them.

`Checkpoint` is a lazy view over a model folder (single file or sharded with an index): names,
shapes and dtypes come from the headers alone, and tensor bytes are read through a memory map,
only the rows that are asked for. `ShardWriter` streams tensors back out in the same format.
"""
from __future__ import annotations

from converter.io.checkpoint import Checkpoint, TensorInfo
from converter.io.header import DTYPE_SIZES, SafetensorsHeader, read_header
from converter.io.writer import ShardWriter

__all__ = ["Checkpoint", "TensorInfo", "DTYPE_SIZES", "SafetensorsHeader", "read_header", "ShardWriter"]
