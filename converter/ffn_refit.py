"""FfnRefit: refitted down_proj weights that travel beside a plan, in their own safetensors file.

Cutting FFN channels removes their share of every down_proj output. A least-squares refit of
the kept columns (converter.score.refit_solver) recovers much of it without training, but its result
is weights, not indices, so it cannot live in the editable JSON: the plan names a file beside
itself (`<plan>.refit`, a safetensors file of float32 [hidden, kept] per layer) with its sha256,
and the surgery takes down_proj from it instead of slicing the source. The name deliberately does
not end in `.safetensors`: loaders that glob `*.safetensors` in a model folder (vLLM without an
index, for one) would take it for a weight shard. The file is read through
safetensors only (no pickle), must sit in the plan's own folder, and must match the hash the
plan records, so an edited or swapped file is refused rather than silently exported.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError

SUFFIX = ".refit"
# The output dtypes a refitted float32 weight can be rounded to.
ROUNDABLE = ("F32", "F16", "BF16")


@dataclass(frozen=True, eq=False)
class FfnRefit:
    """Per layer, the down_proj weight [hidden, kept channels] in float32, and the ridge it used."""

    weights: tuple[np.ndarray, ...]
    ridge: float

    def check(self, layers: int, hidden: int, kept: int, path: Path | str) -> None:
        if len(self.weights) != layers:
            raise ConvertError(f"refit holds {len(self.weights)} layers of down_proj weights, the model has {layers}",
                               path)
        for layer, w in enumerate(self.weights):
            if w.shape != (hidden, kept) or w.dtype != np.float32:
                raise ConvertError(f"refit weight of layer {layer} is {w.dtype} {list(w.shape)}, expected float32 "
                                   f"[{hidden}, {kept}]", path)
            if not np.isfinite(w).all():
                raise ConvertError(f"refit weight of layer {layer} is not finite", path)

    def save(self, path: Path) -> str:
        """Write the weights to `path`; returns the file's sha256 for the plan to record."""
        from converter.io.safetensors_writer import save_whole_file

        save_whole_file(path, {f"layer.{i}": np.ascontiguousarray(w) for i, w in enumerate(self.weights)},
                        {"ridge": repr(self.ridge)})
        return file_sha256(path)

    @classmethod
    def load(cls, plan_path: Path, entry: Any) -> FfnRefit:
        """The refit a plan's `ffn_refit` entry names, checked against its hash."""
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("sha256"), str):
            raise ConvertError("ffn_refit must be an object with 'file' and 'sha256'", plan_path)
        name = entry["file"]
        if Path(name).name != name or name in ("", ".", ".."):
            raise ConvertError(f"ffn_refit file {name!r} must be a file name in the plan's own folder", plan_path)
        path = Path(plan_path).parent / name
        if path.is_symlink() or not path.is_file():
            raise ConvertError("is missing (the plan's ffn_refit names it; keep it beside the plan)", path)
        if file_sha256(path) != entry["sha256"]:
            raise ConvertError("does not match the sha256 the plan records; it was changed or belongs to "
                               "another plan", path)
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = set(f.keys())
                count = len(keys)
                if keys != {f"layer.{i}" for i in range(count)}:
                    raise ConvertError("holds tensors other than layer.0 .. layer.N-1", path)
                weights = tuple(f.get_tensor(f"layer.{i}") for i in range(count))
                ridge = float((f.metadata() or {}).get("ridge", "nan"))
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, ConvertError):
                raise
            raise ConvertError(f"cannot be read as a refit file ({type(exc).__name__}: {exc})", path) from exc
        return cls(weights, ridge)

    def output_bytes(self, layer: int, dtype: str) -> np.ndarray:
        """Layer's weight rounded to `dtype` (round to nearest even, as torch does), as raw uint8."""
        w = self.weights[layer]
        if dtype == "F32":
            out = w
        elif dtype == "F16":
            out = w.astype(np.float16)
        elif dtype == "BF16":
            bits = w.view(np.uint32)
            out = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)) \
                .astype(np.uint16)
        else:
            raise ValueError(f"cannot round a refit to {dtype}")
        return np.ascontiguousarray(out).view(np.uint8).reshape(*w.shape, -1)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def refit_path(plan_path: Path) -> Path:
    """Where a plan saved at `plan_path` keeps its refit: prune_plan.json -> prune_plan.refit."""
    side = plan_path.with_name(plan_path.stem + SUFFIX)
    return side if side != plan_path else plan_path.with_name(plan_path.name + SUFFIX)
