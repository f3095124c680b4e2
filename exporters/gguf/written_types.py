"""The GGML type every tensor of a written GGUF got, read back, and which fell back because of the cut.

A quantised type stores rows in blocks; a row length that is not a whole number of blocks makes
the quantiser fall back. llama.cpp's rule (src/llama-quant.cpp, tensor_type_fallback), stated here
as data: a K-quant target whose rows are not a multiple of 256 becomes the 32-block type in
FALLBACK, and any target whose rows are not a multiple of its (fallback's) block becomes F16; our
own converter applies the second half to q4_0 .. q8_0 (exporters.gguf.quant.tensor_type). The
file's tensor table is read back after quantising (its types are gguf-py's enums; tests check the
reading against gguf-py's GGUFReader), each tensor's intended type is recovered from
what was written through that rule (for q4_k_m: Q5_0 on a 1056-long row was meant as Q4_K), and
the type its dense counterpart gets is the rule applied to the intended type and the dense row
length. A tensor whose written type differs from that dense type fell back because of the plan:
the exporter warns in one line, and the report lists every kind's types and what the fallback costs.
"""
from __future__ import annotations

import math
import mmap
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from converter.errors import ConvertError
from converter.prune import PrunedCheckpoint
from exporters.gguf.quant import OutType, resolve_outtype
from exporters.gguf.tensors import GgufTensor, plan_tensors

Q = GGMLQuantizationType
# llama-quant.cpp tensor_type_fallback: K-quant target -> the type written when ncols % 256 != 0.
FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
}
V = GGUFValueType
U64 = struct.Struct("<Q")
SCALAR_BYTES: dict[GGUFValueType, int] = {
    V.UINT8: 1, V.INT8: 1, V.BOOL: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4,
    V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8,
}
# The K-quant types llama.cpp's mixtures give 2-D weights (llama_tensor_get_type_impl), base type first.
MIXTURE_TYPES: dict[str, tuple[GGMLQuantizationType, ...]] = {
    "q4_k_m": (Q.Q4_K, Q.Q6_K), "q5_k_m": (Q.Q5_K, Q.Q6_K), "q6_k": (Q.Q6_K,),
}


def block_of(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def written_type(target: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """The type a tensor meant as `target` is written in when its rows hold `cols` values."""
    if cols % block_of(target) == 0:
        return target
    fallback = FALLBACK.get(target, target)
    return fallback if cols % block_of(fallback) == 0 else Q.F16


def intended_type(written: GGMLQuantizationType, cols: int, outtype: OutType,
                  embed_or_output: bool) -> GGMLQuantizationType:
    """The type a tensor written as `written` was meant to have before any fallback.

    Unique for the 32-block fallbacks (Q5_0 <- Q4_K, Q5_1 <- Q5_K, Q8_0 <- Q6_K); an F16 row that no
    32-block type fits could have been meant as any type of the mixture, and counts as its base type.
    """
    if outtype.needs_llama_cpp:
        candidates = MIXTURE_TYPES.get(outtype.name, ())
    else:
        meant = outtype.embed_output if embed_or_output and outtype.embed_output is not None else outtype.weight
        candidates = (meant,)
    return next((t for t in candidates if t != written and written_type(t, cols) == written), written)


def type_bytes(qtype: GGMLQuantizationType, rows: int, cols: int) -> int:
    """Bytes of a rows x cols tensor in `qtype`, at its bits per value (also for rows that are not whole blocks)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return rows * cols * size // block


@dataclass(frozen=True)
class TensorType:
    """One weight of the written file: its rows, row length (and the dense one), and its types."""

    name: str
    rows: int
    cols: int
    dense_cols: int
    written: GGMLQuantizationType
    intended: GGMLQuantizationType
    dense: GGMLQuantizationType

    @property
    def kind(self) -> str:
        parts = self.name.split(".")
        return ".".join("*" if p.isdigit() else p for p in parts)

    @property
    def fell_back(self) -> bool:
        """Written in another type than its dense counterpart gets because the plan's row length broke a block (not
        a pruned row that fits the intended type where the dense one did not: an expert 48 wide cut to 32)."""
        return self.written != self.dense and self.written != self.intended

    @property
    def nbytes(self) -> int:
        return type_bytes(self.written, self.rows, self.cols)

    @property
    def nbytes_as_dense(self) -> int:
        """Its bytes had it kept the dense counterpart's type."""
        return type_bytes(self.dense, self.rows, self.cols)


def read_types(path: Path) -> dict[str, tuple[GGMLQuantizationType, tuple[int, ...]]]:
    """name -> (type, shape in ggml order: row length first) of every tensor in a GGUF.

    Reads only the header, stepping over the metadata values: gguf-py's GGUFReader parses every
    vocabulary string into its own array and took over a minute on a 151936-token file, where this
    takes a fraction of a second (tests compare the two on every file they read back).
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] not in (2, 3):
            raise ConvertError("is not a GGUF file of version 2 or 3", path)
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
        offset = 24
        for _ in range(n_kv):
            offset = _skip_string(data, offset)
            (kind,), offset = struct.unpack_from("<I", data, offset), offset + 4
            offset = _skip_value(data, offset, GGUFValueType(kind))
        types = {}
        for _ in range(n_tensors):
            (length,) = struct.unpack_from("<Q", data, offset)
            name = bytes(data[offset + 8:offset + 8 + length]).decode("utf-8")
            offset += 8 + length
            (n_dims,) = struct.unpack_from("<I", data, offset)
            shape = struct.unpack_from(f"<{n_dims}Q", data, offset + 4)
            (qtype,) = struct.unpack_from("<I", data, offset + 4 + 8 * n_dims)
            offset += 4 + 8 * n_dims + 4 + 8
            types[name] = (GGMLQuantizationType(qtype), tuple(int(d) for d in shape))
    return types


def _skip_string(data: mmap.mmap, offset: int) -> int:
    return offset + 8 + struct.unpack_from("<Q", data, offset)[0]


def _skip_value(data: mmap.mmap, offset: int, kind: GGUFValueType) -> int:
    if kind == GGUFValueType.STRING:
        return _skip_string(data, offset)
    if kind != GGUFValueType.ARRAY:
        return offset + SCALAR_BYTES[kind]
    item, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if GGUFValueType(item) in SCALAR_BYTES:
        return offset + count * SCALAR_BYTES[GGUFValueType(item)]
    if item == GGUFValueType.STRING:  # the vocabulary: one length per string, inline for speed
        length = U64.unpack_from
        for _ in range(count):
            offset += 8 + length(data, offset)[0]
        return offset
    for _ in range(count):
        offset = _skip_value(data, offset, GGUFValueType(item))
    return offset


def tensor_types(path: Path, tensors: list[GgufTensor], outtype: OutType) -> list[TensorType]:
    """Every tensor of two or more dimensions in the GGUF at `path` (written from `tensors`), with its types."""
    dense_cols = {t.name: t.planned.source.shape[-1] for t in tensors if t.planned is not None}
    embed_or_output = {t.name for t in tensors if t.planned is not None and t.planned.role in ("embed", "lm_head")}
    out = []
    for name, (written, shape) in read_types(path).items():
        if len(shape) < 2:
            continue
        cols, rows = shape[0], math.prod(shape[1:])
        intended = intended_type(written, cols, outtype, name in embed_or_output)
        dense = written_type(intended, dense_cols.get(name, cols))
        out.append(TensorType(name, rows, cols, dense_cols.get(name, cols), written, intended, dense))
    return out


def fallback_warning(types: list[TensorType], outtype: OutType) -> str | None:
    """One line naming the tensor kinds that fell back and the types they fell back to, or None."""
    by_kind: dict[str, Counter[str]] = {}
    lengths: dict[str, set[int]] = {}
    for t in types:
        if t.fell_back:
            by_kind.setdefault(t.kind, Counter())[f"{t.dense.name} -> {t.written.name}"] += 1
            lengths.setdefault(t.kind, set()).add(t.cols)
    if not by_kind:
        return None
    parts = [f"{kind} (rows of {', '.join(map(str, sorted(lengths[kind])))}: "
             + ", ".join(f"{change} x{n}" for change, n in sorted(counts.items())) + ")"
             for kind, counts in sorted(by_kind.items())]
    blocks = sorted({block_of(t.dense) for t in types if t.fell_back})
    extra = sum(t.nbytes - t.nbytes_as_dense for t in types if t.fell_back)
    return (f"warning: --outtype {outtype.name}: {'; '.join(parts)} fell back from the dense export's types, "
            f"because the plan's row length is not a multiple of {'/'.join(map(str, blocks))} ({extra:+,} bytes); "
            f"an FFN size on that multiple keeps them (`plan --outtype {outtype.name}` draws sizes on it)")


def warn_fallbacks(path: Path, tensors: list[GgufTensor], outtype: OutType) -> None:
    """Read the written GGUF back and print the one-line warning when the plan made tensors fall back."""
    if not outtype.needs_llama_cpp and outtype.weight in (Q.F32, Q.F16, Q.BF16):
        return
    line = fallback_warning(tensor_types(path, tensors, outtype), outtype)
    if line is not None:
        print(line, file=sys.stderr)


def export_types(path: Path, pruned: PrunedCheckpoint, requested: str | None) -> tuple[OutType, list[TensorType]]:
    """The out type and the tensor types of a GGUF that the exporter wrote from `pruned` with --outtype `requested`."""
    from exporters.gguf.hparams import gguf_conventions

    embed = [p.dtype for p in pruned.planned() if p.role == "embed"]
    outtype = resolve_outtype(requested, embed[0] if embed else pruned.planned()[0].dtype)
    return outtype, tensor_types(path, plan_tensors(pruned, gguf_conventions(pruned), outtype), outtype)
