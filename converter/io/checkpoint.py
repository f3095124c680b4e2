"""Checkpoint: a lazy, validated view over a Hugging Face safetensors model folder.

Only headers are read when a checkpoint is opened. Tensor bytes are read with positional reads
(pread) of exactly the spans needed: asking for some rows of a 2 GB embedding reads those rows
(coalescing small gaps so the disk sees large sequential reads), and untouched tensors can be
copied file-to-file by the kernel without passing through Python at all (`copy_range`). A
memory map was tried first: page faults at 4 KiB granularity ran at under half of `cp`'s speed
on a cold cache. Every file the checkpoint touches is proven to lie inside the model folder
first; pickled `.bin` weights are refused, never loaded.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.errors import ConvertError
from converter.io.buffers import BufferPool
from converter.io.jsonfile import read_json_object
from converter.io.header import DTYPE_SIZES, read_header
from converter.io.model_folder import LinkRefused, check_links, resolve_inside

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_INDEX_BYTES = 64 * 1024 * 1024
COALESCE_GAP_BYTES = 1 << 20
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 1024
WORD_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


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
    try:
        resolved = resolve_inside(candidate, folder)
    except LinkRefused as exc:
        raise ConvertError(f"weight_map file '{name}' {exc.problem}", index_path) from None
    if not resolved.is_file():
        raise ConvertError(f"weight_map names shard '{name}', which does not exist", index_path)
    return candidate


def _read_index(folder: Path, index_path: Path) -> dict[str, Path]:
    raw = read_json_object(index_path, MAX_INDEX_BYTES, "a safetensors index")
    weight_map = raw.get("weight_map")
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
    """The safetensors files of a model folder and its index (if sharded), or a clear error.

    With an index, its weight_map names the files; a `model.safetensors` beside it that the index
    does not list is refused, since transformers would load that file and this tool the shards.
    """
    index_path = folder / INDEX_NAME
    single = folder / SINGLE_NAME
    if index_path.is_file():
        files = sorted(set(_read_index(folder, index_path).values()))
        if (single.is_file() or single.is_symlink()) and single not in files:
            raise ConvertError(
                f"holds both {SINGLE_NAME} and {INDEX_NAME}, whose weight_map does not list {SINGLE_NAME}, so which "
                f"weights are meant is ambiguous (a stock loader reads {SINGLE_NAME}, the index names "
                f"{len(files)} other shard(s)); delete whichever of the two is stale", folder)
        return files, index_path
    files = [single] if single.is_file() else sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.is_file() or f.is_symlink()]
    for f in files:
        resolve_inside(f, folder)
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
        self._fds: dict[Path, int] = {}
        self._fds_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._kernel_copy = hasattr(os, "copy_file_range")

    @classmethod
    def open(cls, folder: Path | str) -> Checkpoint:
        """Open a model folder: read and cross-check every header and the index, load no data."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConvertError("is not a folder", folder)
        check_links(folder)
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

    def _fd(self, file: Path) -> int:
        with self._fds_lock:  # the read-ahead thread and the writer open files concurrently
            fd = self._fds.get(file)
            if fd is None:
                fd = os.open(file, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self._fds[file] = fd
            return fd

    def _pread_into(self, file: Path, offset: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        fd = self._fd(file)
        done = 0
        while done < view.nbytes:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ConvertError(f"file ended while reading at byte {offset + done}; it was truncated", file)
            done += n

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a fresh uint8 array."""
        info = self.info(name)
        out = np.empty(info.nbytes, dtype=np.uint8)
        self._pread_into(info.file, info.start, out)
        return out

    def raw_rows(self, name: str, rows: Sequence[int] | np.ndarray, pool: BufferPool | None = None) -> np.ndarray:
        """Bytes of the selected rows (axis 0, sorted), shaped [len(rows), row_bytes].

        Kept rows closer than about 1 MiB are read as one span, so a dense selection becomes a
        few large sequential reads and a sparse one reads little more than the rows themselves.
        With `pool`, the spans and the result use its buffers (give the result back once written).
        """
        info = self.info(name)
        idx = np.asarray(rows, dtype=np.int64)
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        out = _fresh(pool, len(idx) * row_bytes).reshape(len(idx), row_bytes)
        if not len(idx) or not row_bytes:
            return out
        gap_rows = max(1, COALESCE_GAP_BYTES // row_bytes)
        breaks = np.flatnonzero(np.diff(idx) > gap_rows) + 1
        for group in np.split(np.arange(len(idx)), breaks):
            lo, hi = int(idx[group[0]]), int(idx[group[-1]]) + 1
            if hi - lo == len(group):
                self._pread_into(info.file, info.start + lo * row_bytes, out[group[0]:group[-1] + 1])
            else:
                self._scatter_read(info.file, info.start, idx[group], out[group[0]:group[-1] + 1], pool)
        return out

    def _scatter_read(self, file: Path, start: int, rows: np.ndarray, out: np.ndarray,
                      pool: BufferPool | None) -> None:
        """Read the span from rows[0] to rows[-1] in one pass, kept rows straight into `out`.

        One preadv per IOV_MAX pieces: each run of kept rows lands in its place in `out`, each gap
        in a small scratch buffer that is overwritten and dropped, so the kept bytes are copied
        once (by the kernel) instead of read into a span and gathered from it.
        """
        row_bytes = out.shape[1]
        first, last = row_runs(rows)
        gaps = rows[first[1:]] - rows[last[:-1] - 1] - 1
        junk = memoryview(_scratch(pool, int(gaps.max()) * row_bytes))
        flat = memoryview(out).cast("B")
        pieces: list[memoryview] = []
        for k, (a, b) in enumerate(zip(first.tolist(), last.tolist())):
            if k:
                pieces.append(junk[:int(gaps[k - 1]) * row_bytes])
            pieces.append(flat[a * row_bytes:b * row_bytes])
        self._preadv_all(file, start + int(rows[0]) * row_bytes, pieces)

    def _preadv_all(self, file: Path, offset: int, pieces: list[memoryview]) -> None:
        """Fill `pieces` from consecutive file bytes starting at `offset`, IOV_MAX pieces per call."""
        fd = self._fd(file)
        i = 0
        while i < len(pieces):
            n = os.preadv(fd, pieces[i:i + IOV_MAX], offset)
            if n <= 0:
                raise ConvertError(f"file ended while reading at byte {offset}; it was truncated", file)
            offset += n
            while n and i < len(pieces):
                if n >= pieces[i].nbytes:
                    n -= pieces[i].nbytes
                    i += 1
                else:  # a short read ended inside this piece: continue from where it stopped
                    pieces[i] = pieces[i][n:]
                    n = 0

    def raw_cols(self, name: str, cols: Sequence[int] | np.ndarray, pool: BufferPool | None = None) -> np.ndarray:
        """Bytes of the selected columns (axis 1) of a 2-D tensor, shaped [rows, len(cols), itemsize]."""
        info = self.info(name)
        whole = _scratch(pool, info.nbytes)
        self._pread_into(info.file, info.start, whole)
        word = WORD_OF_SIZE[info.itemsize]
        words = whole.view(word).reshape(info.shape[0], info.shape[1])
        idx = np.asarray(cols, dtype=np.int64)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= info.shape[1]):
            raise ValueError(f"column index out of range for {name} {list(info.shape)}")
        out = _fresh(pool, info.shape[0] * len(idx) * info.itemsize)
        # mode="clip" skips numpy's per-element bounds check (checked once above): twice as fast.
        np.take(words, idx, axis=1, out=out.view(word).reshape(info.shape[0], len(idx)), mode="clip")
        return out.reshape(info.shape[0], len(idx), info.itemsize)

    def copy_range(self, name: str, dest_fd: int) -> None:
        """Append a tensor's bytes to an open file, copied by the kernel where it can."""
        info = self.info(name)
        self._copy_span(info.file, info.start, info.nbytes, dest_fd)

    def copy_rows(self, name: str, rows: Sequence[int] | np.ndarray, dest_fd: int) -> None:
        """Append the selected rows (axis 0, sorted) to an open file, one kernel copy per run of rows.

        The bytes of a row-pruned tensor never pass through Python: each run of consecutive kept
        rows is one copy_file_range, as cheap per byte as copying the untouched tensors.
        """
        info = self.info(name)
        idx = np.asarray(rows, dtype=np.int64)
        if not len(idx) or not info.shape[0]:
            return
        row_bytes = info.nbytes // info.shape[0]
        first, last = row_runs(idx)
        for row, count in zip(idx[first].tolist(), (last - first).tolist()):
            self._copy_span(info.file, info.start + row * row_bytes, count * row_bytes, dest_fd)

    def _copy_span(self, file: Path, offset: int, remaining: int, dest_fd: int) -> None:
        src = self._fd(file)
        try:
            while remaining and self._kernel_copy:
                n = os.copy_file_range(src, dest_fd, remaining, offset)
                if n <= 0:
                    raise OSError("copy_file_range made no progress")
                offset += n
                remaining -= n
        except OSError:
            self._kernel_copy = False  # e.g. a file system without it: copy through a buffer from now on
        if not remaining:
            return
        chunk = np.empty(min(remaining, 64 << 20), dtype=np.uint8)
        while remaining:
            part = chunk[: min(remaining, chunk.size)]
            self._pread_into(file, offset, part)
            view = memoryview(part)
            while view.nbytes:
                view = view[os.write(dest_fd, view):]
            offset += part.size
            remaining -= part.size

    def fingerprint(self) -> str:
        """A cheap identity of the checkpoint: a hash of every tensor's name, dtype, shape and headers.

        Hashing the data of a 100 GB model would take minutes; names, shapes, dtypes and the first
        and last bytes of each file tell apart any two checkpoints a user is likely to mix up.
        Computed once per opened checkpoint: the plan check, the pruned view, the scores check and
        the report all ask for it.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"{name}|{t.dtype}|{t.shape}|{t.nbytes}\n".encode())
        for file in self.files:
            size = file.stat().st_size
            for offset in (0, max(0, size - 4096)):
                chunk = np.empty(min(4096, size), dtype=np.uint8)
                self._pread_into(file, offset, chunk)
                h.update(chunk.tobytes())
        self._fingerprint = "sha256:" + h.hexdigest()[:32]
        return self._fingerprint

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


def row_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive values in sorted, non-empty `rows`: (first, end) positions of each run."""
    first = np.concatenate(([0], np.flatnonzero(np.diff(rows) != 1) + 1))
    return first, np.concatenate((first[1:], [len(rows)]))


def _fresh(pool: BufferPool | None, nbytes: int) -> np.ndarray:
    """A uint8 array for a result: from the pool, or new."""
    return pool.take(nbytes) if pool is not None else np.empty(nbytes, dtype=np.uint8)


def _scratch(pool: BufferPool | None, nbytes: int) -> np.ndarray:
    """A uint8 array to read bytes into that are gathered from and then dropped."""
    return pool.scratch(nbytes) if pool is not None else np.empty(nbytes, dtype=np.uint8)
