"""Symmetric block quantization of one weight matrix into onnxruntime's MatMulNBits layout.

A weight W [N, K] (N outputs, the PyTorch Linear layout) is cut along K into blocks of
`block_size` (K padded with zeros to a whole block). Each block's scale maps the value of largest
magnitude, sign kept, onto the most negative code, -2^(bits-1); codes are stored offset by
2^(bits-1) as unsigned, the zero point MatMulNBits and GatherBlockQuantized assume when none is
given. 4-bit codes pack two to a byte, the even k in the low nibble. Rows are quantized in
chunks, so the float temporaries stay a small multiple of one chunk, not of the tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROW_CHUNK = 4096


@dataclass(frozen=True)
class BlockQuantized:
    """MatMulNBits inputs B [N, blocks, block_size * bits / 8] (uint8) and scales [N, blocks] (float32)."""

    packed: np.ndarray
    scales: np.ndarray


def _quantize_rows(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = weight.shape
    blocks = -(-cols // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :cols] = weight
    grouped = padded.reshape(rows, blocks, block_size)
    index = np.abs(grouped).argmax(axis=2)[..., None]
    peak = np.take_along_axis(grouped, index, axis=2)[..., 0]
    offset = 1 << (bits - 1)
    scales = peak / -offset
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    codes = np.clip(np.rint(grouped / safe) + offset, 0, 2 * offset - 1).astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, scales.astype(np.float32)


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int) -> BlockQuantized:
    """Quantize float W [N, K]; `bits` is 4 or 8, `block_size` a power of two of at least 16."""
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits weights of {bits} bits are not written; use 4 or 8")
    parts = [_quantize_rows(np.asarray(weight[i:i + ROW_CHUNK], dtype=np.float32), bits, block_size)
             for i in range(0, weight.shape[0], ROW_CHUNK)]
    return BlockQuantized(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def dequantize_blocks(quantized: BlockQuantized, bits: int, cols: int) -> np.ndarray:
    """The float W [N, K] that MatMulNBits computes with (for tests and error reports)."""
    packed = quantized.packed
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:2], -1) if bits == 4 else packed
    values = (codes.astype(np.float32) - (1 << (bits - 1))) * quantized.scales[..., None]
    return values.reshape(packed.shape[0], -1)[:, :cols]
