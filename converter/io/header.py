"""Parse and validate a safetensors header before trusting any offset in it.

The format (https://github.com/huggingface/safetensors) is: an 8-byte little-endian header
length N, N bytes of JSON mapping tensor names to dtype, shape and [begin, end) data offsets,
then the data. A hostile or truncated file can lie in every field, so each one is checked here:
the length against the file size, the JSON, the dtypes, the shapes (and their byte size) and
that the offsets tile the data region exactly, as the reference implementation requires.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConvertError
from converter.io.dtypes import DTYPE_SIZES

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 8


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor as the header describes it; offsets are absolute positions in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: the entries in file order and the free-form metadata."""

    path: Path
    entries: tuple[HeaderEntry, ...]
    metadata: dict[str, str]
    data_start: int


def _shape(path: Path, name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise ConvertError(f"tensor '{name}' has an invalid shape {value!r}; the safetensors header is corrupt", path)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in value):
        raise ConvertError(f"tensor '{name}' has an invalid shape {value!r}; the safetensors header is corrupt", path)
    return tuple(value)


def _entry(path: Path, name: str, raw: object, data_start: int, data_len: int) -> HeaderEntry:
    if not isinstance(raw, dict):
        raise ConvertError(f"tensor '{name}' is not described by an object in the safetensors header", path)
    dtype = raw.get("dtype")
    if dtype not in DTYPE_SIZES:
        raise ConvertError(f"tensor '{name}' has unknown dtype {dtype!r}; the safetensors header is corrupt", path)
    shape = _shape(path, name, raw.get("shape"))
    offsets = raw.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise ConvertError(f"tensor '{name}' has invalid data_offsets {offsets!r}", path)
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise ConvertError(
            f"tensor '{name}' data_offsets [{begin}, {end}] point outside the {data_len}-byte data region; "
            "the file is truncated or corrupt", path)
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if expected != end - begin:
        raise ConvertError(
            f"tensor '{name}' shape {list(shape)} {dtype} needs {expected} bytes but its data_offsets span "
            f"{end - begin}; the safetensors header is corrupt", path)
    return HeaderEntry(name, dtype, shape, data_start + begin, data_start + end)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _metadata(path: Path, value: object) -> dict[str, str]:
    """The free-form `__metadata__`: absent or null, or an object of strings (as the reference reader requires)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        found = f"a JSON {_json_type(value)}"
    else:
        bad = next((k for k, v in value.items() if not isinstance(v, str)), None)
        if bad is None:
            return dict(value)
        found = f"an object whose '{bad}' is a JSON {_json_type(value[bad])}"
    raise ConvertError(f"safetensors __metadata__ must map strings to strings but is {found}; the file is corrupt "
                       "(re-save it with safetensors' save_file and string metadata)", path)


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of one safetensors file (the data is not touched)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ConvertError("file is shorter than a safetensors header; it is truncated or not safetensors",
                                   path)
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ConvertError(
                    f"safetensors header claims {n} bytes but the file has {size - 8} after the length field; "
                    "the file is truncated or not safetensors", path)
            blob = f.read(n)
    except OSError as exc:
        raise ConvertError(f"cannot read file: {exc.strerror or exc}", path) from exc
    try:
        raw = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConvertError(f"safetensors header is not valid JSON ({type(exc).__name__}); the file is corrupt",
                           path) from exc
    except _DuplicateKey as exc:
        raise ConvertError(f"tensor '{exc}' is listed twice in the safetensors header", path) from exc
    if not isinstance(raw, dict):
        raise ConvertError("safetensors header is not a JSON object; the file is corrupt", path)
    data_start = 8 + n
    data_len = size - data_start
    metadata = _metadata(path, raw.pop("__metadata__", None))
    entries = sorted((_entry(path, name, value, data_start, data_len) for name, value in raw.items()),
                     key=lambda e: (e.start, e.end))
    cursor = data_start
    for e in entries:
        if e.start != cursor:
            problem = "overlap" if e.start < cursor else "leave a gap"
            raise ConvertError(f"tensor data offsets {problem} at tensor '{e.name}'; the safetensors file is corrupt",
                               path)
        cursor = e.end
    if cursor != size:
        raise ConvertError(
            f"tensor data ends at byte {cursor} but the file has {size} bytes; the safetensors file is corrupt", path)
    return SafetensorsHeader(path, tuple(entries), metadata, data_start)
