"""The safetensors dtypes: their sizes and their torch counterparts, in one table.

Headers name dtypes by safetensors' strings ("BF16", "F8_E4M3"); the byte-streaming rewrite
needs only their sizes, while scoring and the ONNX exporter reinterpret raw bytes as torch
tensors. Both facts live here (compare safetensors' own torch.py). torch is imported only
inside `raw_to_torch`, so the HF rewrite, `plan` and `merge-scores` never pay its start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
TORCH_DTYPE_NAMES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def raw_to_torch(data: np.ndarray, dtype: str, shape: tuple[int, ...], copy: bool = True) -> torch.Tensor:
    """Reinterpret raw little-endian bytes as a torch tensor. Copies, so the result is writable, unless
    `copy` is False: then a fresh, writable array the caller owns (PrunedCheckpoint.read's) is viewed in place."""
    import torch

    flat = torch.from_numpy(np.array(data, dtype=np.uint8, copy=copy or None).reshape(-1))
    return flat.view(getattr(torch, TORCH_DTYPE_NAMES[dtype])).reshape(shape)
