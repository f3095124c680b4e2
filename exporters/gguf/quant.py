"""Output types: which GGML type each tensor gets, and how its float rows are encoded.

The rules follow llama.cpp's converter: 1-D tensors and norms stay F32, every other weight gets
the requested type, and a row whose length is not a multiple of the block size falls back to
F16. f32/f16/bf16/q8_0 and the legacy 4/5-bit types are encoded here with gguf-py's numpy
quantizers (for the 4/5-bit types token_embd and output stay Q8_0, as llama.cpp's quantizer
keeps them at higher precision). The K-quants are made by llama.cpp's own quantizer through its
Python binding, from a 16-bit GGUF written first, weighted by the importance matrix from scoring
when the scores carry one (exporters.gguf.imatrix).
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType, quants

from converter.errors import ConvertError
from exporters.gguf.imatrix import ImportanceMatrix, LlamaImatrix

Q = GGMLQuantizationType
LLAMA_EXTRA = "pip install 'compact-convert[llama]'"


@dataclass(frozen=True)
class OutType:
    """One --outtype: the file type, the type of 2-D weights, and llama.cpp's ftype for K-quants."""

    name: str
    file_type: LlamaFileType
    weight: GGMLQuantizationType
    embed_output: GGMLQuantizationType | None = None
    llama_ftype: int | None = None

    @property
    def needs_llama_cpp(self) -> bool:
        return self.llama_ftype is not None


OUTTYPES: dict[str, OutType] = {
    "f32": OutType("f32", LlamaFileType.ALL_F32, Q.F32),
    "f16": OutType("f16", LlamaFileType.MOSTLY_F16, Q.F16),
    "bf16": OutType("bf16", LlamaFileType.MOSTLY_BF16, Q.BF16),
    "q8_0": OutType("q8_0", LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
    "q4_0": OutType("q4_0", LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.Q8_0),
    "q4_1": OutType("q4_1", LlamaFileType.MOSTLY_Q4_1, Q.Q4_1, Q.Q8_0),
    "q5_0": OutType("q5_0", LlamaFileType.MOSTLY_Q5_0, Q.Q5_0, Q.Q8_0),
    "q5_1": OutType("q5_1", LlamaFileType.MOSTLY_Q5_1, Q.Q5_1, Q.Q8_0),
    "q4_k_m": OutType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, Q.F16, llama_ftype=int(LlamaFileType.MOSTLY_Q4_K_M)),
    "q5_k_m": OutType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, Q.F16, llama_ftype=int(LlamaFileType.MOSTLY_Q5_K_M)),
    "q6_k": OutType("q6_k", LlamaFileType.MOSTLY_Q6_K, Q.F16, llama_ftype=int(LlamaFileType.MOSTLY_Q6_K)),
}
SOURCE_DTYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}
SIXTEEN_BIT = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
PARALLEL_ELEMENTS = 4 << 20


def resolve_outtype(requested: str | None, source_dtype: str) -> OutType:
    """The OutType for --outtype (None or 'auto': the source's 16-bit type); checks the llama extra."""
    if source_dtype not in SOURCE_DTYPES:
        raise ConvertError(f"weights are {source_dtype}; GGUF export reads F32, F16 or BF16 checkpoints")
    name = (requested or "auto").lower()
    if name == "auto":
        name = "bf16" if source_dtype == "BF16" else "f16"
    outtype = OUTTYPES.get(name)
    if outtype is None:
        raise ConvertError(f"--outtype {requested!r} is not a GGUF type; choose one of auto, {', '.join(OUTTYPES)}")
    if outtype.needs_llama_cpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ConvertError(f"--outtype {name} uses llama.cpp's own quantizer, which is not installed; "
                               f"install it with {LLAMA_EXTRA}") from None
    return outtype


def intermediate(outtype: OutType, source_dtype: str) -> OutType:
    """What to write before llama.cpp quantizes: the source's own float type, so nothing is lost."""
    return OUTTYPES[SIXTEEN_BIT[source_dtype]] if outtype.needs_llama_cpp else outtype


def tensor_type(outtype: OutType, gguf_name: str, shape: tuple[int, ...], embed_or_output: bool
                ) -> GGMLQuantizationType:
    """The GGML type of one tensor under llama.cpp's converter rules."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    qtype = outtype.embed_output if embed_or_output and outtype.embed_output is not None else outtype.weight
    block, _ = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return Q.F16
    return qtype


def byte_shape(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    return quants.quant_shape_to_byte_shape(shape, qtype)


def to_float(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """uint8 rows [n, row_bytes] of a source dtype as a float tensor [n, cols] (a view where possible)."""
    t = torch.from_numpy(np.ascontiguousarray(raw))
    return t.view({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype])


@contextmanager
def threads_for(elements: int) -> Iterator[None]:
    """One torch thread for small tensors: waking the pool costs ~10 ms a call on a busy machine,
    more than converting a few million values takes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1 if elements < PARALLEL_ELEMENTS else previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def encode(values: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    """Float rows [n, cols] encoded as GGML `qtype`, as uint8 rows [n, row_bytes]."""
    with threads_for(values.numel()):
        return _encode(values, qtype)


def _encode(values: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        out = values.to(torch.float32)
    elif qtype == Q.F16:
        out = values.to(torch.float16)
    elif qtype == Q.BF16:
        out = values.to(torch.bfloat16).view(torch.int16)
    else:
        return quants.quantize(values.to(torch.float32).numpy(), qtype).view(np.uint8)
    return out.contiguous().numpy().view(np.uint8)


def quantize_with_llama_cpp(src: Path, dst: Path, outtype: OutType, imatrix: ImportanceMatrix | None = None) -> None:
    """Run llama.cpp's quantizer (llama_model_quantize) from a 16-bit GGUF to a K-quant GGUF, weighing
    columns by `imatrix` when given (as `llama-quantize --imatrix` does)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = outtype.llama_ftype
    held = LlamaImatrix(llama_cpp, imatrix) if imatrix is not None else None
    if held is not None:
        held.apply(llama_cpp, params)
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not dst.is_file():
        raise ConvertError(f"llama.cpp's quantizer failed to make {outtype.name} (status {status})", src)
