"""Partial rotary and LongRoPE as llama.cpp's phi3 graph reads them, from a config's rope parameters.

Phi-3 rotates only the first `head_dim * partial_rotary_factor` dimensions of each head
(`rope.dimension_count`), and LongRoPE divides each rotary frequency by a factor: the
`short_factor` list while a sequence fits `original_max_position_embeddings`, `long_factor`
beyond it, with cos/sin scaled by an attention factor. llama.cpp's converter stores the two
lists as the tensors `rope_factors_short`/`rope_factors_long` and the factor as
`rope.scaling.attn_factor`; its graph picks the long list when the context (n_ctx), not the
position, exceeds `rope.scaling.original_context_length`. The values follow transformers'
`_compute_longrope_parameters` (an explicit `factor` or `attention_factor` is honoured), which for
the published checkpoints equals what llama.cpp's converter computes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converter.arch.gguf_names import ROPE_FACTORS_NAMES
from converter.errors import ConvertError

LONGROPE = "longrope"
# transformers' Phi3Config reads the legacy rope type "su" as LongRoPE.
LONGROPE_ALIASES = ("su",)


def _setting(full: Mapping[str, Any], config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A rope setting from the rope parameters, else the config's top level (older configs keep it there)."""
    value = full.get(key)
    return config.get(key, default) if value is None else value


def rotary_dims(full: Mapping[str, Any], config: Mapping[str, Any], head_dim: int, where: Path) -> int:
    """The rotated dimensions of each head: int(head_dim * partial_rotary_factor), as transformers computes."""
    factor = _setting(full, config, "partial_rotary_factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ConvertError(f"'partial_rotary_factor' must be a number in (0, 1], got {factor!r}", where)
    dims = int(head_dim * factor)
    if dims < 2 or dims % 2:
        raise ConvertError(f"'partial_rotary_factor' {factor!r} leaves {dims} rotary dimensions of {head_dim}; "
                           "RoPE needs an even number", where)
    return dims


def original_context(full: Mapping[str, Any], config: Mapping[str, Any], where: Path) -> int:
    value = _setting(full, config, "original_max_position_embeddings")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConvertError(f"'original_max_position_embeddings' must be a positive integer, got {value!r}", where)
    return value


def attention_factor(full: Mapping[str, Any], config: Mapping[str, Any], where: Path) -> float:
    """The cos/sin scale: `attention_factor` if set, else sqrt(1 + ln(factor) / ln(original context)) above 1."""
    explicit = full.get("attention_factor")
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, (int, float)) or not explicit > 0:
            raise ConvertError(f"rope 'attention_factor' must be a positive number, got {explicit!r}", where)
        return float(explicit)
    original = original_context(full, config, where)
    factor = full.get("factor")
    if factor is None:
        factor = config.get("max_position_embeddings", original) / original
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ConvertError(f"rope 'factor' must be a positive number, got {factor!r}", where)
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def factor_tensors(full: Mapping[str, Any], rotary: int, where: Path) -> dict[str, np.ndarray]:
    """llama.cpp's tensor name -> float32 factors, one per rotary frequency (rotary / 2 of each list)."""
    out = {}
    for key, name in ROPE_FACTORS_NAMES.items():
        values = full.get(key)
        if not isinstance(values, list) or len(values) != rotary // 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in values):
            raise ConvertError(f"LongRoPE '{key}' must list {rotary // 2} positive numbers (one per rotary "
                               f"frequency), got {values!r}", where)
        out[name] = np.asarray(values, dtype=np.float32)
    return out
