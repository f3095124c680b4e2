"""Which decoder layers attend through a sliding window: config `layer_types`, or the family's pattern.

Gemma 2/3 and SmolLM3 mark each layer `sliding_attention` or `full_attention`; configs written
without `layer_types` get transformers' default, every `sliding_window_pattern`-th layer global
(the config's own value, else the family's). The GGUF exporter writes the pattern as llama.cpp's
per-layer flags and the fused ONNX graph sets each GroupQueryAttention's window from it, so it is
read and validated here once.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converter.arch.families import Family
from converter.errors import ConvertError


def sliding_layers(config: Mapping[str, Any], family: Family, layers: int, where: Path) -> list[bool]:
    """Per layer, whether it slides; a malformed `layer_types` is a ConvertError naming `where`."""
    types = config.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers or not set(types) <= {"sliding_attention",
                                                                                     "full_attention"}:
            raise ConvertError(f"'layer_types' must list 'sliding_attention'/'full_attention' for each of the "
                               f"{layers} layers", where)
        return [t == "sliding_attention" for t in types]
    pattern = int(config.get("sliding_window_pattern") or family.sliding_window_pattern)
    return [(i + 1) % pattern != 0 for i in range(layers)]
