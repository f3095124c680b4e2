"""GGUF tensors of a pruned checkpoint: llama.cpp names, transforms, types, and their bytes.

`plan_tensors` turns every PlannedTensor into a GgufTensor (name from the role table, final
shape and GGML type) before anything is written, refusing tensors llama.cpp has no place for.
`tensor_chunks` then produces one tensor's GGUF bytes in order: tensors whose kept rows can be
read directly (the embedding, the head, every unpermuted weight) are read and converted a block
of rows at a time, so memory holds a bounded chunk, never the whole tensor or a float32 copy.
Transforms are row reorderings (the llama q/k permutation) and Gemma's +1 on norms, both done in
float32 as llama.cpp's converter does them. Mixture-of-experts weights become stacked tensors written
expert by expert (exporters/gguf/experts.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from gguf import GGMLQuantizationType

from converter.arch.gguf_names import EXPERT_STACKS, F32_ROLES, PERMUTED_ROLES, ROPE_FREQS_NAME, TENSOR_NAMES, \
    GgufConventions
from converter.errors import ConvertError
from converter.prune import PlannedTensor, PrunedCheckpoint
from exporters.gguf.experts import ExpertStack, expert_stacks
from exporters.gguf.quant import OutType, byte_shape, encode, tensor_type, to_float

CHUNK_BYTES = 8 << 20
Q = GGMLQuantizationType


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the GGUF file: its name, shape (numpy order), type and where its values come from."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    planned: PlannedTensor | None
    row_order: tuple[int, ...] | None = None
    offset: float = 0.0
    values: np.ndarray | None = field(default=None, compare=False)
    # An expert stack: its slabs come from `experts` (then `planned` is the first of its sources).
    experts: ExpertStack | None = None

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return byte_shape(self.shape, self.qtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.byte_shape)


def llama_permutation(rows: int, heads: int) -> tuple[int, ...]:
    """Row order llama.cpp's llama graph expects: per head, (2, d/2) halves become (d/2, 2) interleaved."""
    if rows % (2 * heads):
        raise ConvertError(f"cannot interleave {rows} q/k rows over {heads} heads for llama.cpp's rope")
    return tuple(np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1).tolist())


def _gguf_name(pruned: PrunedCheckpoint, planned: PlannedTensor, llama_cpp: GgufConventions) -> str | None:
    """The llama.cpp name, None for a tied head (llama.cpp reuses token_embd) or a tensor of another tower, or a
    ConvertError."""
    where = pruned.source.folder
    role = planned.role
    if pruned.spec.passes_through(planned.name):
        return None  # another tower (vision, projector): llama.cpp's converter writes it to an mmproj file
    if role is None or role not in TENSOR_NAMES:
        raise ConvertError(f"tensor '{planned.name}' has no counterpart in llama.cpp's {llama_cpp.arch} "
                           "architecture; GGUF export cannot carry it", where)
    if role == "lm_head":
        if pruned.spec.tied_embeddings:
            return None
        if llama_cpp.lm_head == "absent":
            raise ConvertError(f"the model has an untied lm_head, but llama.cpp's {llama_cpp.arch} graph always "
                               "reuses the embedding as the output layer", where)
    slot = pruned.spec.slot(planned.name)
    layer = slot.layer if slot is not None else None
    return TENSOR_NAMES[role].format(layer=layer)


def plan_tensors(pruned: PrunedCheckpoint, llama_cpp: GgufConventions, outtype: OutType,
                 rope_freqs: np.ndarray | None = None) -> list[GgufTensor]:
    """Every tensor of the GGUF, in source order, checked before a byte is written."""
    dims = pruned.spec.dims
    norm_offset = pruned.spec.family_record.norm_offset
    out: list[GgufTensor] = []
    stacks = expert_stacks(pruned)
    for planned in pruned.planned():
        if planned.dtype not in ("F32", "F16", "BF16"):
            raise ConvertError(f"tensor '{planned.name}' is {planned.dtype}; GGUF export reads F32, F16 or BF16",
                               pruned.source.folder)
        if planned.role in EXPERT_STACKS:
            out += [GgufTensor(s.name, s.shape, tensor_type(outtype, s.name, s.shape, False), s.source.parts[0],
                               experts=s.source) for s in stacks.get(planned.name, ())]
            continue
        name = _gguf_name(pruned, planned, llama_cpp)
        if name is None:
            continue
        role = planned.role or ""
        order = None
        if llama_cpp.permute_qk and role in PERMUTED_ROLES:
            order = llama_permutation(planned.shape[0], getattr(dims, PERMUTED_ROLES[role]))
        offset = norm_offset if role.endswith("norm") else 0.0
        qtype = Q.F32 if role in F32_ROLES else tensor_type(outtype, name, planned.shape, role in ("embed", "lm_head"))
        out.append(GgufTensor(name, planned.shape, qtype, planned, order, offset))
        if role == "embed" and pruned.spec.tied_embeddings and llama_cpp.lm_head == "required":
            head = TENSOR_NAMES["lm_head"]
            out.append(replace(out[-1], name=head, qtype=tensor_type(outtype, head, planned.shape, True)))
    if rope_freqs is not None:
        out.append(GgufTensor(ROPE_FREQS_NAME, rope_freqs.shape, Q.F32, None, values=rope_freqs))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConvertError("two tensors map to the same llama.cpp name; the checkpoint holds duplicates",
                           pruned.source.folder)
    return out


def float_tensors(values: dict[str, np.ndarray]) -> list[GgufTensor]:
    """Tensors computed from the config rather than read from the checkpoint (LongRoPE's factors), in float32."""
    return [GgufTensor(name, v.shape, Q.F32, None, values=v) for name, v in values.items()]


def _passthrough(t: GgufTensor) -> bool:
    planned = t.planned
    return (planned is not None and t.row_order is None and t.offset == 0.0
            and {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}[planned.dtype] == t.qtype)


def _row_chunks(pruned: PrunedCheckpoint, planned: PlannedTensor, order: tuple[int, ...] | None
                ) -> Iterator[np.ndarray]:
    """uint8 row blocks [rows, row_bytes] of the pruned tensor, in order, bounded by CHUNK_BYTES where the
    kept rows can be read directly; a column cut or a row permutation reads the tensor whole."""
    shape = planned.shape
    if len(shape) == 1:
        data = pruned.read(planned).reshape(1, -1)
        if order is not None:
            data = data.reshape(shape[0], -1)[list(order)].reshape(1, -1)
        yield data
        return
    if order is not None or planned.axis not in (None, 0):
        data = pruned.read(planned).reshape(shape[0], -1)
        yield data[list(order)] if order is not None else data
        return
    rows = planned.keep if planned.axis == 0 and planned.keep is not None else range(shape[0])
    row_bytes = math.prod(shape[1:]) * planned.source.itemsize
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, len(rows), step):
        picked = np.asarray(rows[start:start + step], dtype=np.int64)
        yield pruned.source.raw_rows(planned.source.name, picked)


def _expert_chunks(pruned: PrunedCheckpoint, stack: ExpertStack) -> Iterator[np.ndarray]:
    """uint8 row blocks of an expert stack, expert after expert: each expert's own tensor as `_row_chunks` reads
    it, or each slab of a stacked tensor (the one slab in memory) cut into blocks of about CHUNK_BYTES."""
    if not stack.stacked:
        for part in stack.parts:
            yield from _row_chunks(pruned, part, None)
        return
    for slab in stack.slabs(pruned):
        step = max(1, CHUNK_BYTES // max(1, slab.shape[1]))
        blocks = [slab[start:start + step] for start in range(0, slab.shape[0], step)]
        del slab  # the blocks alone hold it, and the last one handed out lets it go before the next is read
        while blocks:
            yield blocks.pop(0)


def tensor_chunks(pruned: PrunedCheckpoint, t: GgufTensor) -> Iterator[np.ndarray]:
    """The GGUF bytes of one tensor as consecutive uint8 chunks (t.nbytes in all), each ~CHUNK_BYTES or less."""
    if t.planned is None:
        values = torch.from_numpy(np.ascontiguousarray(t.values, dtype=np.float32)).reshape(1, -1)
        yield encode(values, t.qtype).reshape(-1)
        return
    passthrough = _passthrough(t)
    source = _expert_chunks(pruned, t.experts) if t.experts is not None else _row_chunks(pruned, t.planned,
                                                                                           t.row_order)
    for raw in source:
        chunk = raw.reshape(-1) if passthrough else _encoded(raw, t.planned.dtype, t.offset, t.qtype)
        del raw  # nothing of this chunk's source stays bound here while the next one is read
        yield chunk
        del chunk


def _encoded(raw: np.ndarray, dtype: str, offset: float, qtype: GGMLQuantizationType) -> np.ndarray:
    values = to_float(raw, dtype)
    if offset:
        values = values.to(torch.float32) + offset
    return encode(values, qtype).reshape(-1)
