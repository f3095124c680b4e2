"""Block quantization of one weight matrix into onnxruntime's MatMulNBits layout.

A weight W [N, K] (N outputs, the PyTorch Linear layout) is cut along K into blocks of
`block_size` (K padded with zeros to a whole block). Symmetric: round to nearest maps each block's
value of largest magnitude, sign kept, onto the most negative code, -2^(bits-1) (onnxruntime's
quantizer); the exporter searches instead (`search`): the peak on either end of the code range, the
codes rounded for each and the scale refitted to them by least squares, the one of least squared
error kept (5-12% less error than round to nearest on SmolLM2's matrices, never more on any block).
Codes are stored offset by 2^(bits-1) as unsigned, the zero point MatMulNBits and
GatherBlockQuantized assume when none is given. Asymmetric: the block's range [min(w, 0), max(w,
0)] spans all 2^bits codes and each block stores its own zero point, rounded as onnxruntime's MLAS
quantizer does (half away from zero); zero points are [N, blocks] bytes for 8 bits and, for 4 bits,
packed two to a byte along the blocks with a row's odd last block padded by 8 (onnxruntime's
`quantize_matmul_4bits` layout).
4-bit codes pack two to a byte, the even k in the low nibble. Rows are quantized in chunks, so
the float temporaries stay a small multiple of one chunk, not of the tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

ROW_CHUNK = 4096


class Rows(Protocol):
    """A matrix that hands out row slices as arrays (an ndarray, or rows converted as they are asked for)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, rows: slice) -> np.ndarray: ...


@dataclass(frozen=True)
class BlockQuantized:
    """MatMulNBits inputs B [N, blocks, block_size * bits / 8] (uint8), scales [N, blocks] (float32) and,
    when asymmetric, zero_points [N, blocks * bits / 8 rounded up] (uint8)."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None = None


def _pack_nibbles(codes: np.ndarray, pad: int) -> np.ndarray:
    """Two 4-bit codes a byte along the last axis, the even one low; an odd count is padded with `pad`."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.full((*codes.shape[:-1], 1), pad, np.uint8)], axis=-1)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _grouped(weight: np.ndarray, block_size: int) -> np.ndarray:
    rows, cols = weight.shape
    blocks = -(-cols // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :cols] = weight
    return padded.reshape(rows, blocks, block_size)


def _quantize_rows_asymmetric(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, ...]:
    grouped = _grouped(weight, block_size)
    top = np.float32((1 << bits) - 1)
    low = np.minimum(grouped.min(axis=2), 0)
    scales = (np.maximum(grouped.max(axis=2), 0) - low) / top
    safe = np.where(scales == 0, 1.0, scales).astype(np.float32)
    zeros = np.clip(np.floor(-low / safe + np.float32(0.5)), 0, top).astype(np.float32)
    codes = np.clip(np.floor(grouped / safe[..., None] + zeros[..., None] + np.float32(0.5)), 0, top).astype(np.uint8)
    zero_points = zeros.astype(np.uint8)
    if bits == 4:
        codes, zero_points = _pack_nibbles(codes, 0), _pack_nibbles(zero_points, 8)
    return codes, scales.astype(np.float32), zero_points


def _signed_peaks(grouped: np.ndarray) -> np.ndarray:
    """Each block's value of largest magnitude, sign kept: [rows, blocks]."""
    index = np.abs(grouped).argmax(axis=2)[..., None]
    return np.take_along_axis(grouped, index, axis=2)[..., 0]


def _quantize_rows(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, ...]:
    grouped = _grouped(weight, block_size)
    peak = _signed_peaks(grouped)
    offset = 1 << (bits - 1)
    scales = peak / -offset
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    codes = np.clip(np.rint(grouped / safe) + offset, 0, 2 * offset - 1).astype(np.uint8)
    if bits == 4:
        codes = _pack_nibbles(codes, 0)
    return codes, scales.astype(np.float32)


def _quantize_rows_searched(weight: np.ndarray, bits: int, block_size: int,
                            columns: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Symmetric codes with the least squared error a block, of two candidates: the block's peak on
    the negative end of the code range (-2^(bits-1), round to nearest's choice) or on the positive
    end (2^(bits-1) - 1), the codes rounded for each and the scale then refitted to them by least
    squares (s = <w, q> / <q, q>, error |w|^2 - <w, q>^2 / <q, q>). No block ends worse than round to
    nearest. Shrunk scales that clip the peak were tried as candidates too: less squared error still,
    but SmolLM2's int4 top-1 agreement with fp32 fell 0.6-3.6 points, so the peak is never clipped.
    `columns` [K] weighs each column's squared error (exporters/onnx/fused/column_weights.py): the
    choice and the refit are then weighted least squares."""
    grouped = _grouped(weight, block_size)
    weights = np.ones(grouped.shape[1:], np.float32) if columns is None else _grouped(columns[None], block_size)[0]
    peak = _signed_peaks(grouped)
    offset = 1 << (bits - 1)
    best_fit = np.full(peak.shape, -1.0, np.float32)
    best_codes = np.zeros(grouped.shape, np.int8)
    best_scales = np.zeros(peak.shape, np.float32)
    codes = np.empty_like(grouped)  # one float temporary, reused in place
    for end in (-offset, offset - 1):
        scale = np.where(peak != 0, peak / np.float32(end), np.float32(1.0)).astype(np.float32)
        np.divide(grouped, scale[..., None], out=codes)
        np.clip(np.rint(codes, out=codes), -offset, offset - 1, out=codes)
        dot = np.einsum("rbk,bk,rbk->rb", grouped, weights, codes)
        norm = np.einsum("rbk,bk,rbk->rb", codes, weights, codes)
        safe = np.where(norm > 0, norm, 1)
        fit = np.where(norm > 0, dot * dot / safe, 0).astype(np.float32)
        better = fit > best_fit
        best_fit = np.where(better, fit, best_fit)
        np.copyto(best_codes, codes, casting="unsafe", where=better[..., None])
        best_scales = np.where(better, np.where(norm > 0, dot / safe, 0), best_scales)
    stored = (best_codes.astype(np.int16) + offset).astype(np.uint8)
    if bits == 4:
        stored = _pack_nibbles(stored, 0)
    return stored, best_scales.astype(np.float32)


def quantize_blocks(weight: np.ndarray | Rows, bits: int, block_size: int, symmetric: bool = True,
                    search: bool = False, columns: np.ndarray | None = None) -> BlockQuantized:
    """Quantize float W [N, K]; `bits` is 4 or 8, `block_size` a power of two of at least 16; `search`
    (symmetric only) picks each block's scale for the least squared error instead of from its peak,
    each column's error weighed by `columns` [K] when given."""
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits weights of {bits} bits are not written; use 4 or 8")
    rows = partial(_quantize_rows_searched, columns=columns) if symmetric and search else (
        _quantize_rows if symmetric else _quantize_rows_asymmetric)
    parts = [rows(np.asarray(weight[i:i + ROW_CHUNK], dtype=np.float32), bits, block_size)
             for i in range(0, weight.shape[0], ROW_CHUNK)]
    packed, scales = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return BlockQuantized(packed, scales, None if symmetric else np.concatenate([p[2] for p in parts]))


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)


def dequantize_blocks(quantized: BlockQuantized, bits: int, cols: int) -> np.ndarray:
    """The float W [N, K] that MatMulNBits computes with (for tests and error reports)."""
    packed, scales = quantized.packed, quantized.scales
    codes = _unpack_nibbles(packed) if bits == 4 else packed
    zeros: np.ndarray | int = 1 << (bits - 1)
    if quantized.zero_points is not None:
        points = quantized.zero_points
        zeros = (_unpack_nibbles(points) if bits == 4 else points)[:, :scales.shape[1], None].astype(np.float32)
    values = (codes.astype(np.float32) - zeros) * scales[..., None]
    return values.reshape(packed.shape[0], -1)[:, :cols]
