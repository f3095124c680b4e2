"""The grid an FFN width is drawn on so that every quantised row keeps the type the dense export gets.

Quantised formats store a weight row in blocks: llama.cpp's K-quants (q4_k_m, q5_k_m, q6_k) in
blocks of 256 values, its legacy types (q4_0 .. q8_0) in blocks of 32, onnxruntime's MatMulNBits
(the ONNX int4 and fused int8 graphs) in blocks of `--int4-block-size`. A row whose length is not
a whole number of blocks falls back: llama.cpp writes a K-quant row of 1056 values as Q5_0/Q8_0
instead of Q4_K/Q6_K (src/llama-quant.cpp, tensor_type_fallback), a legacy row as F16, and
MatMulNBits pads it with zeros. Pruning cuts exactly one dimension that becomes a row length: the
FFN width (down_proj's rows have one value per channel); the vocabulary is a row count and
needs nothing. So planning draws FFN widths on multiples of `lcm(--ffn-multiple, block)`: the
user's multiple (default 32) is kept, and the output's block is never broken by it. The data
below is the only place these blocks are stated for planning; tests check them against gguf-py's
block sizes and the exporters' out types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from converter.errors import ConvertError

K_QUANT_BLOCK = 256  # QK_K
LEGACY_BLOCK = 32  # QK4_0 .. QK8_0
GGUF_ROW_BLOCKS: dict[str, int] = {
    "q4_k_m": K_QUANT_BLOCK, "q5_k_m": K_QUANT_BLOCK, "q6_k": K_QUANT_BLOCK,
    "q8_0": LEGACY_BLOCK, "q4_0": LEGACY_BLOCK, "q4_1": LEGACY_BLOCK, "q5_0": LEGACY_BLOCK, "q5_1": LEGACY_BLOCK,
}
GGUF_FLOAT = ("auto", "f32", "f16", "bf16")
ONNX_BLOCKED = ("int8", "int4")  # MatMulNBits in blocks of --int4-block-size (int8: the fused graph's)
ONNX_FLOAT = ("fp32", "fp16")


@dataclass(frozen=True)
class RowBlock:
    """What an export's quantised rows need: a block length (1: nothing) and why, in words."""

    block: int = 1
    why: str = ""


def row_block(fmt: str | None, outtype: str | None, int4_block_size: int) -> RowBlock:
    """The block the rows of `fmt`/`outtype` come in; `fmt` None: told by the out type's name, which
    no two formats share (the standalone `plan` command knows only --outtype). An out type the
    format does not have is refused here, before any scoring."""
    if fmt == "hf" or outtype is None:
        return RowBlock()
    name = outtype.lower()
    known = {"gguf": (*GGUF_FLOAT, *GGUF_ROW_BLOCKS), "onnx": (*ONNX_FLOAT, *ONNX_BLOCKED)}
    allowed = known.get(fmt or "", (*known["gguf"], *known["onnx"]))
    if name not in allowed:
        kind = fmt.upper() if fmt else "GGUF or ONNX"
        raise ConvertError(f"--outtype {outtype!r} is not a {kind} type; choose one of "
                           f"{', '.join(dict.fromkeys(allowed))}")
    if fmt in (None, "gguf") and name in GGUF_ROW_BLOCKS:
        kind = "llama.cpp K-quant" if GGUF_ROW_BLOCKS[name] == K_QUANT_BLOCK else "GGUF"
        return RowBlock(GGUF_ROW_BLOCKS[name], f"{kind} {name} rows come in blocks of {GGUF_ROW_BLOCKS[name]}")
    if fmt in (None, "onnx") and name in ONNX_BLOCKED:
        return RowBlock(int4_block_size, f"ONNX {name} MatMulNBits rows come in blocks of {int4_block_size} "
                                         "(--int4-block-size)")
    return RowBlock()


def ffn_grid(ffn_multiple: int, block: int) -> int:
    """The multiple FFN widths are drawn on: both the user's --ffn-multiple and the output's block divide it."""
    return math.lcm(ffn_multiple, block)
