"""The cos/sin caches that GroupQueryAttention's fused rotary embedding reads, from transformers.

`GroupQueryAttention(do_rotary=1)` rotates q and k itself, reading row `position` of a
[context, head_dim/2] cos and sin table. The tables come from the model's own transformers
rotary module run over every position, so every static RoPE variant (default, linear, llama3,
yarn with its attention factor) is exactly what the model computes; variants that rescale with
the run-time length are refused earlier (exporters.onnx.wrapper.check_supported).
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from converter.prune import PrunedCheckpoint
from exporters.onnx.fused.recipe import DEFAULT_ROPE
from exporters.onnx.model import hf_config


def _rotary_class(config: object) -> type:
    """The model's rotary module, found beside its config class (gemma3_text lives in models.gemma3)."""
    module_name = type(config).__module__.replace(".configuration_", ".modeling_")
    module = importlib.import_module(module_name)
    found = [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding")]
    if len(found) != 1:
        raise RuntimeError(f"transformers' {module_name} has {len(found)} rotary embedding classes")
    return found[0]


def rotary_tables(pruned: PrunedCheckpoint, context: int, head_dim: int,
                  ropes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(cos, sin) by layer type ("default": the one table of a model without per-type rotary), float32
    [context, head_dim // 2]: the first half of transformers' duplicated tables."""
    config = hf_config(pruned)
    rotary = _rotary_class(config)(config=config)
    positions = torch.arange(context, dtype=torch.int64)[None]
    half = head_dim // 2
    tables = {}
    for rope in ropes:
        args = () if rope == DEFAULT_ROPE else (rope,)
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions, *args)
        tables[rope] = (cos[0, :, :half].float().numpy().copy(), sin[0, :, :half].float().numpy().copy())
    return tables
