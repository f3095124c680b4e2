"""How close each output type must come to the pruned float32 reference, in relative logit error.

The error is max|out - reference| / max|reference| over every position of the prompt, and top-1
is the share of positions whose argmax agrees. Bounds come from what the export tests measure
(README, tests/test_gguf_tiny.py, tests/test_gguf_real.py, tests/test_onnx_*.py): f32 GGUF and
fp32 ONNX reach 1e-5..1e-4 (Gemma in llama.cpp ~1e-3, ggml's GELU reads an fp16 table), 16-bit
weights ~1e-3 (measured on the pruned SmolLM2: GGUF f16 9e-4, ONNX fp16 1.3e-3), GGUF q8_0 5e-2
with top-1 94%. 4-bit types and onnxruntime's int8 (dynamic, per-tensor activations) are far
coarser: GGUF q4_0 rel 0.78 / top-1 54%, ONNX int8 0.54 / 44%, ONNX int4 0.82 / 52%, so for
them only a catastrophe (a permuted vocabulary, another model: top-1 near chance) is caught.
"""
from __future__ import annotations

from dataclasses import dataclass

from converter.arch.families import gguf_conventions_of


@dataclass(frozen=True)
class Tolerance:
    """Largest relative logit error and smallest top-1 agreement accepted."""

    relative: float
    top1: float

    def describe(self) -> str:
        return f"rel <= {self.relative:g}, top-1 >= {self.top1:.0%}"


FLOAT32 = Tolerance(1e-3, 0.9)
HALF = Tolerance(3e-2, 0.8)
BFLOAT = Tolerance(6e-2, 0.75)
EIGHT_BIT = Tolerance(0.2, 0.75)
LOW_BIT = Tolerance(1.0, 0.35)
# An hf OUT holds the very tensors the reference export writes: any difference is a fault.
SAME_WEIGHTS = Tolerance(1e-5, 1.0)
GELU_TABLE = Tolerance(1e-2, 0.9)

BY_OUTTYPE = {
    "f32": FLOAT32, "fp32": FLOAT32, "float32": FLOAT32,
    "f16": HALF, "fp16": HALF, "float16": HALF,
    "bf16": BFLOAT, "bfloat16": BFLOAT,
    "q8_0": EIGHT_BIT,
}


def tolerance_for(fmt: str, outtype: str, architecture: str) -> Tolerance:
    """The bound for one export: by format, weight type and (for llama.cpp's GELU) family."""
    if fmt == "hf":
        return SAME_WEIGHTS
    if fmt == "onnx" and outtype == "int8":
        return LOW_BIT
    found = BY_OUTTYPE.get(outtype.lower(), LOW_BIT)
    llama_cpp = gguf_conventions_of(architecture) if fmt == "gguf" else None
    if found is FLOAT32 and llama_cpp is not None and llama_cpp.computes_gelu:
        return GELU_TABLE
    return found
