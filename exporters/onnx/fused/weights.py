"""Stream the pruned weights into model.onnx.data, converted or quantized one tensor at a time.

Every initializer of the fused graph is one `Job`: the checkpoint tensors it is made of (q, k and
v rows concatenated into the packed QKV projection, their biases likewise, gate and up rows into
one gate/up projection), read through the
PrunedCheckpoint (only kept rows and channels), converted to the graph's float type and MatMul
layout, or quantized into MatMulNBits blocks (exporters.onnx.fused.quantize); the LM head follows
the recipe's head precision, which --int4-lm-head may set apart from the other weights. The next job is
read and converted in a worker thread while the current one is written (converter.readahead), so
at most two jobs' tensors are in memory, never the model; a job's matrix stays in its checkpoint
dtype and is converted to float32 a chunk of rows at a time (Float32Rows), so even the largest
(a tied 150k-row embedding) costs its bf16 bytes plus its output, not an fp32 copy besides.
Given the scoring pass's matmul input sums (the plan's scores), the quantizer weighs each block's
columns by them (exporters.onnx.fused.column_weights).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from onnx import TensorProto

from converter.io.dtypes import raw_to_torch
from converter.prune import PlannedTensor, PrunedCheckpoint
from converter.readahead import read_ahead
from exporters.onnx.external import ExternalData
from exporters.onnx.fused import names
from exporters.onnx.fused.column_weights import column_weights
from exporters.onnx.fused.quantize import ROW_CHUNK, quantize_blocks
from exporters.onnx.fused.recipe import FusedRecipe, Precision

if TYPE_CHECKING:
    from converter.score.matmul_inputs import MatmulSums

Array = tuple[str, int, np.ndarray]  # initializer name, ONNX data type, value


@dataclass(frozen=True)
class Job:
    """One graph initializer (or a quantized pair) built from checkpoint tensors."""

    kind: str  # "norm", "linear", "embed" or "table"
    base: str
    sources: tuple[str, ...]
    biases: tuple[str, ...] = ()
    table: np.ndarray | None = None


def jobs(recipe: FusedRecipe, tables: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Job]:
    """Every initializer the graph reads, in the order the graph reads them; `tables` holds the
    (cos, sin) caches of every rotary table by layer type."""
    embed = "model.embed_tokens.weight"
    out = [] if recipe.tied else [Job("embed", names.EMBED, (embed,))]
    for rope, (cos, sin) in tables.items():
        out += [Job("table", names.rotary(names.COS, rope), (), table=cos),
                Job("table", names.rotary(names.SIN, rope), (), table=sin)]
    for i in range(recipe.dims.layers):
        src = f"model.layers.{i}."
        proj = [src + f"self_attn.{p}_proj" for p in "qkv"]
        out.append(Job("norm", names.in_layer(i, names.INPUT_NORM), (src + "input_layernorm.weight",)))
        out.append(Job("linear", names.in_layer(i, names.QKV), tuple(p + ".weight" for p in proj),
                       tuple(p + ".bias" for p in proj) if recipe.qkv_bias else ()))
        if recipe.qk_norm:
            out.append(Job("norm", names.in_layer(i, names.Q_NORM), (src + "self_attn.q_norm.weight",)))
            out.append(Job("norm", names.in_layer(i, names.K_NORM), (src + "self_attn.k_norm.weight",)))
        out.append(Job("linear", names.in_layer(i, names.O_PROJ), (src + "self_attn.o_proj.weight",)))
        if recipe.sandwich_norms:
            out.append(Job("norm", names.in_layer(i, names.ATTN_OUT_NORM), (src + "post_attention_layernorm.weight",)))
            out.append(Job("norm", names.in_layer(i, names.POST_NORM), (src + "pre_feedforward_layernorm.weight",)))
        else:
            out.append(Job("norm", names.in_layer(i, names.POST_NORM), (src + "post_attention_layernorm.weight",)))
        out.append(Job("linear", names.in_layer(i, names.GATE_UP),
                       (src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight")))
        out.append(Job("linear", names.in_layer(i, names.DOWN), (src + "mlp.down_proj.weight",)))
        if recipe.sandwich_norms:
            out.append(Job("norm", names.in_layer(i, names.MLP_OUT_NORM), (src + "post_feedforward_layernorm.weight",)))
    out.append(Job("norm", names.FINAL_NORM, ("model.norm.weight",)))
    out.append(Job("linear", names.LM_HEAD, (embed if recipe.tied else "lm_head.weight",)))
    return out


def _float_type(precision: Precision) -> tuple[int, type]:
    return (TensorProto.FLOAT16, np.float16) if precision.float_type == TensorProto.FLOAT16 \
        else (TensorProto.FLOAT, np.float32)


class Float32Rows:
    """A checkpoint matrix kept in its own dtype (bf16: half of fp32), handed out as float32 row chunks,
    so converting or quantizing the largest tensor (a 150k-row embedding) never holds its fp32 copy."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.shape: tuple[int, ...] = tuple(tensor.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.tensor[rows].to(torch.float32).numpy()

    def converted(self, np_type: type, transpose: bool) -> np.ndarray:
        """The whole matrix as np_type, [N, K] or transposed to the MatMul layout [K, N], filled chunk by chunk."""
        n, k = self.shape
        out: np.ndarray = np.empty((k, n) if transpose else (n, k), dtype=np_type)
        for start in range(0, n, ROW_CHUNK):
            chunk = self[start:start + ROW_CHUNK]
            if transpose:
                out[:, start:start + ROW_CHUNK] = chunk.T
            else:
                out[start:start + ROW_CHUNK] = chunk
        return out


class _Reader:
    """Loads and converts one job's tensors; runs in the read-ahead thread."""

    def __init__(self, pruned: PrunedCheckpoint, recipe: FusedRecipe, importance: MatmulSums | None) -> None:
        self.pruned = pruned
        self.recipe = recipe
        self.importance = importance
        self.planned: dict[str, PlannedTensor] = {p.name: p for p in pruned.planned()}

    def columns(self, job: Job) -> np.ndarray | None:
        """The quantizer's column weights for this job's matrix, when the scores cover it."""
        if self.importance is None:
            return None
        return column_weights(self.importance, self.planned[job.sources[0]], job.base == names.LM_HEAD,
                              self.pruned.source.folder)

    def tensor(self, name: str) -> torch.Tensor:
        """One checkpoint tensor in its own dtype."""
        planned = self.planned.get(name)
        if planned is None:
            raise RuntimeError(f"the checkpoint has no {name}, which the fused ONNX graph needs")
        return raw_to_torch(self.pruned.read(planned), planned.dtype, planned.shape, copy=False)

    def rows(self, sources: tuple[str, ...]) -> Float32Rows:
        parts = [self.tensor(name) for name in sources]
        return Float32Rows(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))

    def small(self, sources: tuple[str, ...]) -> np.ndarray:
        """Norm weights and biases: vectors, converted whole."""
        return np.concatenate([self.tensor(name).to(torch.float32).numpy() for name in sources])

    def __call__(self, job: Job) -> list[Array]:
        precision = self.recipe.head if job.base == names.LM_HEAD else self.recipe.precision
        onnx_type, np_type = _float_type(precision)
        if job.table is not None:
            return [(job.base, onnx_type, job.table.astype(np_type))]
        if job.kind == "norm":  # Gemma's (1 + w) folded in, in fp32 as transformers computes it
            return [(job.base, onnx_type, (self.small(job.sources) + self.recipe.norm_offset).astype(np_type))]
        weight = self.rows(job.sources)
        out: list[Array] = []
        if precision.bits is None:
            out.append((names.weight(job.base, None), onnx_type, weight.converted(np_type, job.kind != "embed")))
        else:
            columns = self.columns(job) if precision.symmetric else None
            quantized = quantize_blocks(weight, precision.bits, precision.block_size, precision.symmetric,
                                        search=precision.symmetric, columns=columns)
            del weight
            packed = quantized.packed
            if job.kind == "embed":
                packed = packed.reshape(packed.shape[0], -1)
            out.append((names.weight(job.base, precision.bits), TensorProto.UINT8, packed))
            out.append((names.scales(job.base), onnx_type, quantized.scales.astype(np_type)))
            if quantized.zero_points is not None:
                out.append((names.zero_points(job.base), TensorProto.UINT8, quantized.zero_points))
        if job.biases:
            out.append((names.bias(job.base), onnx_type, self.small(job.biases).astype(np_type)))
        return out


def write_weights(pruned: PrunedCheckpoint, recipe: FusedRecipe, all_jobs: list[Job],
                  data: ExternalData, importance: MatmulSums | None = None) -> Iterator[list[TensorProto]]:
    """Write every job's arrays to `data`; yields each job's external TensorProtos once written."""
    for _, arrays in read_ahead(all_jobs, _Reader(pruned, recipe, importance)):
        written = []
        for name, data_type, value in arrays:
            value = np.ascontiguousarray(value)
            written.append(data.add(name, data_type, list(value.shape), memoryview(value).cast("B")))
        yield written
