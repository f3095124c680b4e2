"""Which decoder layers apply RoPE: every layer, or the family's per-layer no-RoPE pattern.

SmolLM3 leaves out the rotary embedding on some layers (config `no_rope_layers`: 1 rotates, 0
does not; transformers' default marks every `no_rope_layer_interval`-th layer, 4). Every
runtime must skip rotary on exactly those layers, so the pattern is read and validated here
once: the GGUF exporter compares it with what llama.cpp's graph hard-codes, the ONNX exporter
traces rotating and non-rotating layers as separate templates. A family without the feature
(`Family.no_rope_interval` None) rotates every layer, whatever the config says, as transformers'
classes for it do.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converter.arch.families import Family
from converter.errors import ConvertError


def rotary_layers(config: Mapping[str, Any], family: Family, layers: int, where: Path) -> tuple[bool, ...]:
    """Per layer, whether it applies RoPE; a malformed `no_rope_layers` is a ConvertError naming `where`."""
    if family.no_rope_interval is None:
        return (True,) * layers
    flags = config.get("no_rope_layers")
    if flags is None:
        interval = config.get("no_rope_layer_interval", family.no_rope_interval)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConvertError(f"'no_rope_layer_interval' must be a positive integer, got {interval!r}", where)
        return tuple((i + 1) % interval != 0 for i in range(layers))
    if (not isinstance(flags, list) or len(flags) != layers
            or any(isinstance(f, bool) or f not in (0, 1) for f in flags)):
        raise ConvertError(f"'no_rope_layers' must list 1 (RoPE) or 0 (no RoPE) for each of the {layers} layers, "
                           f"got {flags!r}", where)
    return tuple(f == 1 for f in flags)


def describe(flags: tuple[bool, ...]) -> str:
    """The layers without RoPE, for error messages: 'layers 3, 7 skip RoPE' or 'every layer rotates'."""
    skipped = [str(i) for i, rotates in enumerate(flags) if not rotates]
    return f"layers {', '.join(skipped)} skip RoPE" if skipped else "every layer applies RoPE"
