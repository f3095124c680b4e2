"""Refuse a config.json whose `dtype` contradicts the dtype its weights are stored in.

transformers loads a model in the dtype config.json names (`dtype`, or `torch_dtype` before
v4.56), casting whatever the safetensors hold: a config that says float16 over F32 weights makes
every stock loader silently round the model, and the export would carry the same contradiction
to the next one. The weights' dtype is the one holding most floating-point parameters (a few
float32 norms beside bfloat16 matrices are normal); a value this table does not know is left to
the loader.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from converter.errors import ConvertError
from converter.io import Checkpoint

CONFIG_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
NAME_OF = {stored: name for name, stored in CONFIG_DTYPES.items()}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def check_config_dtype(config: Mapping[str, Any], ckpt: Checkpoint) -> None:
    """ConvertError naming config.json if its dtype is not the dtype most weights are stored in."""
    key = "dtype" if config.get("dtype") is not None else "torch_dtype"
    value = config.get(key)
    declared = CONFIG_DTYPES.get(value.removeprefix("torch.")) if isinstance(value, str) else None
    if declared is None:
        return
    params: Counter[str] = Counter()
    for info in ckpt:
        if info.dtype in FLOAT_DTYPES and info.itemsize:
            params[info.dtype] += info.nbytes // info.itemsize
    if not params or params[declared] >= max(params.values()):
        return
    stored, count = params.most_common(1)[0]
    name = NAME_OF.get(stored, stored)
    raise ConvertError(
        f"says {key} '{value}' but the weights are stored as {stored} ({count:,} of {sum(params.values()):,} "
        f"floating-point parameters), so a stock loader would silently cast them; set \"{key}\": \"{name}\" in "
        f"config.json, or convert the weights to {value}", ckpt.folder / "config.json")
