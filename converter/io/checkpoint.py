"""Checkpoint: a lazy, validated view over a Hugging Face safetensors model folder.

Only headers are read when a checkpoint is opened. Tensor bytes come from a read-only memory
map, so asking for some rows of a 2 GB embedding touches only those rows' pages, and the kernel
may drop file pages under pressure (they never count as anonymous memory). Every file the
checkpoint touches is proven to lie inside the model folder first; pickled `.bin` weights are
refused, never loaded.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import ConvertError
from converter.io.header import DTYPE_SIZES, HeaderEntry, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_INDEX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the header alone."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


def _inside(folder: Path, name: object, index_path: Path) -> Path:
    """Resolve a shard name from an index, refusing anything that escapes the model folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConvertError(f"weight_map names an invalid file {name!r}", index_path)
    if os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
        raise ConvertError(f"weight_map names '{name}', which lies outside the model folder; refusing to read it",
                           index_path)
    if not name.endswith(".safetensors"):
        raise ConvertError(f"weight_map names '{name}', which is not a .safetensors file", index_path)
    candidate = folder / name
    resolved = candidate.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ConvertError(f"weight_map file '{name}' is a link that leads outside the model folder; refusing to read it",
                           index_path)
    if not resolved.is_file():
        raise ConvertError(f"weight_map names shard '{name}', which does not exist", index_path)
    return candidate


def _read_index(folder: Path, index_path: Path) -> dict[str, Path]:
    try:
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            raise ConvertError("index file is implausibly large", index_path)
        raw = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConvertError(f"cannot parse the index ({type(exc).__name__}: {exc})", index_path) from exc
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError("index has no 'weight_map' object mapping tensor names to shard files", index_path)
    resolved: dict[str, Path] = {}
    mapping: dict[str, Path] = {}
    for tensor, file in weight_map.items():
        if not isinstance(file, str):
            raise ConvertError(f"weight_map entry for '{tensor}' is not a file name", index_path)
        if file not in resolved:
            resolved[file] = _inside(folder, file, index_path)
        mapping[tensor] = resolved[file]
    return mapping


def find_weight_files(folder: Path) -> tuple[list[Path], Path | None]:
    """The safetensors files of a model folder and its index (if sharded), or a clear error."""
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        mapping = _read_index(folder, index_path)
        return sorted(set(mapping.values())), index_path
    single = folder / SINGLE_NAME
    files = [single] if single.is_file() else sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.is_file() or f.is_symlink()]
    for f in files:
        if not f.resolve().is_relative_to(folder.resolve()):
            raise ConvertError("is a link that leads outside the model folder; refusing to read it", f)
    if files:
        return files, None
    if any(folder.glob("pytorch_model*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise ConvertError(
            "has only pickled PyTorch weights (pytorch_model.bin), which compact-convert never unpickles; convert "
            "them once in a trusted environment, e.g. AutoModelForCausalLM.from_pretrained(dir)"
            ".save_pretrained(dir, safe_serialization=True)", folder)
    raise ConvertError("contains no .safetensors weights", folder)


class Checkpoint:
    """A model folder's tensors, by name, read lazily and validated against their headers."""

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo], files: list[Path]) -> None:
        self.folder = folder
        self.tensors = tensors
        self.files = files
        self._maps: dict[Path, np.ndarray] = {}

    @classmethod
    def open(cls, folder: Path | str) -> Checkpoint:
        """Open a model folder: read and cross-check every header and the index, load no data."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConvertError("is not a folder", folder)
        files, index_path = find_weight_files(folder)
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            header = read_header(file)
            for e in header.entries:
                if e.name in tensors:
                    raise ConvertError(f"tensor '{e.name}' is stored twice (also in {tensors[e.name].file.name})", file)
                tensors[e.name] = TensorInfo(e.name, e.dtype, e.shape, file, e.start, e.end)
        if index_path is not None:
            mapping = _read_index(folder, index_path)
            for name, file in mapping.items():
                info = tensors.get(name)
                if info is None or info.file != file:
                    raise ConvertError(f"weight_map says tensor '{name}' is in {file.name} but that shard does not "
                                       "contain it", index_path)
            extra = sorted(set(tensors) - set(mapping))
            if extra:
                raise ConvertError(f"shards contain tensor '{extra[0]}' that the weight_map does not list", index_path)
        return cls(folder, tensors, files)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ConvertError(f"tensor '{name}' is not in the checkpoint", self.folder) from None

    def _map(self, file: Path) -> np.ndarray:
        mapped = self._maps.get(file)
        if mapped is None:
            with file.open("rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            mapped = np.frombuffer(mm, dtype=np.uint8)
            self._maps[file] = mapped
        return mapped

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view into the memory map (no copy)."""
        info = self.info(name)
        return self._map(info.file)[info.start:info.end]

    def raw_rows(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Bytes of the selected rows (axis 0), copied; only those rows' pages are read."""
        info = self.info(name)
        data = self.raw(name).reshape(info.shape[0], -1)
        return data[np.asarray(rows, dtype=np.int64)]

    def raw_cols(self, name: str, cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """Bytes of the selected columns (axis 1) of a 2-D tensor, copied."""
        info = self.info(name)
        data = self.raw(name).reshape(info.shape[0], info.shape[1], info.itemsize)
        return data[:, np.asarray(cols, dtype=np.int64), :]

    def fingerprint(self) -> str:
        """A cheap identity of the checkpoint: a hash of every tensor's name, dtype, shape and headers.

        Hashing the data of a 100 GB model would take minutes; names, shapes, dtypes and the first
        and last bytes of each file tell apart any two checkpoints a user is likely to mix up.
        """
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"{name}|{t.dtype}|{t.shape}|{t.nbytes}\n".encode())
        for file in self.files:
            mapped = self._map(file)
            h.update(bytes(mapped[:4096]))
            h.update(bytes(mapped[-4096:]))
        return "sha256:" + h.hexdigest()[:32]

    def close(self) -> None:
        self._maps.clear()
