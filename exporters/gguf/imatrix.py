"""llama.cpp's importance matrix from the scoring pass: `imatrix.gguf` beside the GGUF, and the quantiser's input.

The scores hold, per matmul weight, the sums of its squared inputs over the calibration text
(converter.score.matmul_inputs). Here they are renamed to llama.cpp's tensor names and cut
through the plan: a matmul keeps the input columns its weight keeps (ffn_down its kept FFN
channels; q/k/v/o, gate/up and output read the uncut hidden state). The file follows llama.cpp's
current format (tools/imatrix/imatrix.cpp, common/imatrix-loader.cpp): `general.type` "imatrix",
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and per weight an F32
`<name>.in_sum2` [1, columns] of raw sums and `<name>.counts` [1, 1] of tokens. A tied
embedding gets no entry (llama.cpp's own collector skips token_embd). An expert stack
(`ffn_{gate,up,down}_exps`, a MUL_MAT_ID in llama.cpp) has a row per expert: `in_sum2` [experts,
columns] of its routed tokens' raw inputs and `counts` [experts, 1] of the tokens routed to each,
ffn_down_exps cut through each expert's own kept channels; llama-quantize divides row by row and hands
the quantiser one row per expert (an expert that saw no token gets ones, as llama-quantize gives it).
The K-quants pass the same data, divided by the counts as `llama-quantize --imatrix` does, to
llama_model_quantize.
"""
from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.errors import ConvertError
from converter.io.gguf_files import IMATRIX_FILE
from converter.score.matmul_inputs import planned_columns

if TYPE_CHECKING:
    from converter.score.matmul_inputs import MatmulSums
    from exporters.gguf.tensors import GgufTensor

MATMUL_ROLES = frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up",
                          "ffn_gate_up", "ffn_down", "lm_head", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
                          "ffn_gate_inp_shexp", "ffn_gate_inp"})
# Expert stack roles (converter.arch.families) -> the stacked projection whose inputs they read.
EXPERT_INPUTS = {"ffn_gate_up_exps": "experts.gate_up_proj", "ffn_gate_exp": "experts.gate_up_proj",
                 "ffn_up_exp": "experts.gate_up_proj", "ffn_down_exps": "experts.down_proj",
                 "ffn_down_exp": "experts.down_proj"}
# Where the scores keep a layer's expert projections and its router (converter.score.matmul_inputs names them).
_LAYER_ENTRY = re.compile(r"(?:.*\.)?model\.layers\.(\d+)\.mlp\."
                          r"(experts\.gate_up_proj|experts\.down_proj|gate\.weight)")


@dataclass(frozen=True)
class ImportanceMatrix:
    """Per llama.cpp weight name, the raw column sums of squared inputs [matrices, columns] (one matrix, or one
    per expert) and the tokens each matrix saw [matrices]; `tokens` positions were scored in all."""

    entries: tuple[tuple[str, np.ndarray, np.ndarray], ...] = field(compare=False)
    tokens: int
    chunk_size: int
    datasets: tuple[str, ...]

    @property
    def chunk_count(self) -> int:
        return self.tokens // self.chunk_size if self.chunk_size else 0

    def means(self) -> list[tuple[str, np.ndarray]]:
        """What llama-quantize hands the quantiser: each matrix's sums divided by its token count (ones for a
        matrix that saw no token), flattened matrix after matrix."""
        out = []
        for name, sums, counts in self.entries:
            seen = counts[:, None] > 0
            means = np.where(seen, sums / np.where(seen, counts[:, None], 1.0), 1.0)
            out.append((name, means.astype(np.float32).reshape(-1)))
        return out


def importance_matrix(tensors: Sequence[GgufTensor], sums: MatmulSums, where: Path) -> ImportanceMatrix | None:
    """The entries for every matmul of the GGUF the scores cover, cut to its kept input columns."""
    by_layer = {(int(m[1]), m[2]): name for name in sums.sums if (m := _LAYER_ENTRY.fullmatch(name))}
    entries = []
    for t in tensors:
        planned = t.planned
        if planned is None:
            continue
        if t.experts is not None and planned.role in EXPERT_INPUTS:
            entry = _expert_entry(t, sums, by_layer.get((planned.layer or 0, EXPERT_INPUTS[planned.role])), where)
            if entry is not None:
                entries.append(entry)
            continue
        if planned.role not in MATMUL_ROLES or len(t.shape) != 2:
            continue
        name = planned.name
        if name not in sums.sums and planned.role == "ffn_gate_inp":
            name = by_layer.get((planned.layer or 0, "gate.weight"), name)  # Mixtral's block_sparse_moe router
        column_sums = sums.sums.get(name)
        if column_sums is None:
            continue
        column_sums = planned_columns(column_sums, planned, planned.name, where)
        _check_columns(column_sums.shape[-1], t.shape[1], planned.name, where)
        entries.append((t.name, column_sums.astype(np.float32).reshape(1, -1), np.asarray([float(sums.tokens)])))
    if not entries or sums.tokens <= 0:
        return None
    return ImportanceMatrix(tuple(sorted(entries, key=lambda e: e[0])), sums.tokens, sums.chunk_size,
                            sums.datasets or ("calibration text",))


def _expert_entry(t: GgufTensor, sums: MatmulSums, key: str | None, where: Path
                  ) -> tuple[str, np.ndarray, np.ndarray] | None:
    """An expert stack's rows: each expert's sums (down: cut through the expert's own kept channels)."""
    stack = t.experts
    counts = sums.counts_of(key) if key is not None else None
    if stack is None or key is None or counts is None:
        return None
    rows = sums.sums[key]
    if rows.shape[0] != t.shape[0]:
        raise ConvertError(f"the scores' input sums for '{key}' cover {rows.shape[0]} experts, the GGUF stack "
                           f"'{t.name}' {t.shape[0]}; the scores belong to another model", where)
    if key.endswith("down_proj"):
        if stack.stacked:
            keeps: list[tuple[int, ...] | None] = list(stack.parts[0].experts_keep or ())
        else:
            keeps = [part.keep if part.axis == 1 else None for part in stack.parts]
        rows = np.stack([row if keep is None else row[np.asarray(keep, dtype=np.int64)]
                         for row, keep in zip(rows, keeps)])
    _check_columns(rows.shape[1], t.shape[2], key, where)
    return t.name, rows.astype(np.float32), counts.astype(np.float64)


def _check_columns(have: int, want: int, name: str, where: Path) -> None:
    if have != want:
        raise ConvertError(f"the scores' input sums for '{name}' have {have} columns, the weight {want}; the "
                           "scores belong to another model", where)


def write_imatrix(path: Path, matrix: ImportanceMatrix, arch: str) -> Path:
    """Write `matrix` as llama.cpp's GGUF imatrix file (what `llama-imatrix -o imatrix.gguf` writes)."""
    from gguf import GGUFType, GGUFWriter, Keys

    writer = GGUFWriter(path, arch)
    writer.add_type(GGUFType.IMATRIX)
    writer.add_array(Keys.IMatrix.DATASETS, list(matrix.datasets))
    writer.add_uint32(Keys.IMatrix.CHUNK_COUNT, matrix.chunk_count)
    writer.add_uint32(Keys.IMatrix.CHUNK_SIZE, matrix.chunk_size)
    for name, sums, counts in matrix.entries:
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(counts.size, -1))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class LlamaImatrix:
    """The matrix as llama_model_quantize_params wants it: a NULL-terminated array of (name, data, size),
    plus the `quantize.imatrix.*` keys llama-quantize records; holds the buffers while the params live."""

    def __init__(self, llama_cpp: Any, matrix: ImportanceMatrix) -> None:
        means = matrix.means()
        self._names = [name.encode() for name, _ in means]
        self._data = [np.ascontiguousarray(values, dtype=np.float32) for _, values in means]
        struct = llama_cpp.llama_model_imatrix_data
        self.array = (struct * (len(means) + 1))()
        for i, (name, values) in enumerate(zip(self._names, self._data)):
            self.array[i].name = name
            self.array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.array[i].size = values.size
        keys: list[tuple[str, int | str]] = [("quantize.imatrix.file", IMATRIX_FILE),
                                             ("quantize.imatrix.dataset", matrix.datasets[0][:127]),
                                             ("quantize.imatrix.entries_count", len(means))]
        if matrix.chunk_count:
            keys.append(("quantize.imatrix.chunks_count", matrix.chunk_count))
        self.overrides = (llama_cpp.llama_model_kv_override * (len(keys) + 1))()
        for i, (key, value) in enumerate(keys):
            item = self.overrides[i]
            item.key = key.encode()
            if isinstance(value, str):
                item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                item.value.val_str = value.encode()[:127]
            else:
                item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                item.value.val_i64 = value

    def apply(self, llama_cpp: Any, params: Any) -> None:
        params.imatrix = ctypes.cast(self.array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(self.overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
