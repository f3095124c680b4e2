"""llama.cpp's importance matrix from the scoring pass: `imatrix.gguf` beside the GGUF, and the quantiser's input.

The scores hold, per matmul weight, the sums of its squared inputs over the calibration text
(converter.score.matmul_inputs). Here they are renamed to llama.cpp's tensor names and cut
through the plan: a matmul keeps the input columns its weight keeps (ffn_down its kept FFN
channels; q/k/v/o, gate/up and output read the uncut hidden state). The file follows llama.cpp's
current format (tools/imatrix/imatrix.cpp, common/imatrix-loader.cpp): `general.type` "imatrix",
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and per weight an F32
`<name>.in_sum2` [1, columns] of raw sums and `<name>.counts` [1, 1] of tokens. A tied
embedding gets no entry (llama.cpp's own collector skips token_embd). The K-quants pass the same
data, divided by the counts as `llama-quantize --imatrix` does, to llama_model_quantize.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.errors import ConvertError
from converter.io.gguf_files import IMATRIX_FILE

if TYPE_CHECKING:
    from converter.score.matmul_inputs import MatmulSums
    from exporters.gguf.tensors import GgufTensor

MATMUL_ROLES = frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up",
                          "ffn_gate_up", "ffn_down", "lm_head"})


@dataclass(frozen=True)
class ImportanceMatrix:
    """Per llama.cpp weight name, the raw column sums of squared inputs over `tokens` positions."""

    entries: tuple[tuple[str, np.ndarray], ...] = field(compare=False)
    tokens: int
    chunk_size: int
    datasets: tuple[str, ...]

    @property
    def chunk_count(self) -> int:
        return self.tokens // self.chunk_size if self.chunk_size else 0

    def means(self) -> list[tuple[str, np.ndarray]]:
        """What llama-quantize hands the quantiser: the sums divided by the token count."""
        return [(name, (sums / max(1, self.tokens)).astype(np.float32)) for name, sums in self.entries]


def importance_matrix(tensors: Sequence[GgufTensor], sums: MatmulSums, where: Path) -> ImportanceMatrix | None:
    """The entries for every matmul of the GGUF the scores cover, cut to its kept input columns."""
    entries = []
    for t in tensors:
        planned = t.planned
        if planned is None or planned.role not in MATMUL_ROLES or len(t.shape) != 2:
            continue
        column_sums = sums.sums.get(planned.name)
        if column_sums is None:
            continue
        if planned.axis == 1 and planned.keep is not None:
            column_sums = column_sums[np.asarray(planned.keep, dtype=np.int64)]
        if column_sums.shape != (t.shape[1],):
            raise ConvertError(f"the scores' input sums for '{planned.name}' have {column_sums.shape[0]} columns, "
                               f"the weight {t.shape[1]}; the scores belong to another model", where)
        entries.append((t.name, column_sums.astype(np.float32)))
    if not entries or sums.tokens <= 0:
        return None
    return ImportanceMatrix(tuple(sorted(entries, key=lambda e: e[0])), sums.tokens, sums.chunk_size,
                            sums.datasets or ("calibration text",))


def write_imatrix(path: Path, matrix: ImportanceMatrix, arch: str) -> Path:
    """Write `matrix` as llama.cpp's GGUF imatrix file (what `llama-imatrix -o imatrix.gguf` writes)."""
    from gguf import GGUFType, GGUFWriter, Keys

    writer = GGUFWriter(path, arch)
    writer.add_type(GGUFType.IMATRIX)
    writer.add_array(Keys.IMatrix.DATASETS, list(matrix.datasets))
    writer.add_uint32(Keys.IMatrix.CHUNK_COUNT, matrix.chunk_count)
    writer.add_uint32(Keys.IMatrix.CHUNK_SIZE, matrix.chunk_size)
    count = np.full((1, 1), float(matrix.tokens), dtype=np.float32)
    for name, sums in matrix.entries:
        writer.add_tensor(f"{name}.in_sum2", sums.reshape(1, -1))
        writer.add_tensor(f"{name}.counts", count)
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
