"""Reading and writing safetensors checkpoints without loading them.

`Checkpoint` is a lazy view over a model folder (single file or sharded with an index): names,
shapes and dtypes come from the headers alone, and tensor bytes are read with pread/preadv (or
copied file to file by the kernel) at offsets taken from those headers, only the rows asked for.
`ShardWriter` streams tensors back out in the same format.
"""
from __future__ import annotations

from converter.io.checkpoint import Checkpoint, TensorInfo
from converter.io.dtypes import DTYPE_SIZES
from converter.io.header import SafetensorsHeader, read_header
from converter.io.safetensors_writer import ShardWriter

__all__ = ["Checkpoint", "TensorInfo", "DTYPE_SIZES", "SafetensorsHeader", "read_header", "ShardWriter"]
