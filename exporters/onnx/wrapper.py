"""The modules that are traced: a prologue, one decoder layer per layer kind, an epilogue.

transformers' own mask and cache code is what breaks ONNX exports with a cache: without an
explicit mask it probes for packed sequences (`aten::diff`), and its sliding-window cache and
masks specialise on the past length, so a graph traced with a short past gives wrong logits (or
a Concat error) once the past outgrows the window. These modules sidestep both:

* `Prologue` embeds the tokens, computes the rotary tables and builds every additive mask itself
  from `attention_mask` (past length = mask length - new tokens): causal by cache index, padding
  from the mask, and for sliding layers `key > query - window`, exactly transformers'
  `sliding_window_overlay`. Every quantity is a tensor op on dynamic shapes, so the graph is
  right for any past length, inside or beyond the window.
* `LayerStep` runs one transformers decoder layer on a plain `DynamicCache` whose layer only
  concatenates (the whole past is kept; the mask picks the window).
* `Epilogue` is the final norm, lm_head and logit soft-capping.

The model-level factors transformers applies outside the decoder layers (Granite's embedding
multiplier and logits divisor, named in the family record) are applied by the prologue and the
epilogue; those inside a layer (Granite's residual and attention multipliers) are in its trace.

Decoder layers of one kind (same window, same rotary table, RoPE applied or not: SmolLM3) are
identical up to their weights, so each kind is traced once and repeated for every layer of that
kind (exporters.onnx.assemble):
the trace costs the same for 2 layers or 80, and no layer beyond the templates is materialised.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from converter.arch import ArchSpec
from converter.arch.families import FAMILIES, Family
from converter.arch.rotary_layers import rotary_layers
from converter.errors import ConvertError
from exporters.onnx.longrope import LONGROPE, LongRopeTables, is_longrope

# RoPE variants whose frequencies change with the sequence length at run time (a data-dependent
# branch that a traced graph would freeze at the example length).
# LongRoPE's short/long switch is a graph op (exporters.onnx.longrope), so it is not among them.
LENGTH_DEPENDENT_ROPE = ("dynamic",)
DEFAULT_ROPE = "default"


def _rope_types(config: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    stack = [config.get("rope_parameters"), config.get("rope_scaling")]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            found.update(item[k] for k in ("rope_type", "type") if isinstance(item.get(k), str))
            stack.extend(v for v in item.values() if isinstance(v, Mapping))
    return found


def check_supported(spec: ArchSpec, path: Path) -> None:
    """Refuse, before anything is written, a model this exporter cannot trace faithfully."""
    if not spec.family_record.onnx:
        supported = [name for name, family in FAMILIES.items() if family.onnx]
        raise ConvertError(f"the ONNX exporter does not support the {spec.architecture} ({spec.family}) family; "
                           f"supported families: {', '.join(supported)}", path)
    dynamic = sorted(_rope_types(spec.config) & set(LENGTH_DEPENDENT_ROPE))
    if dynamic:
        raise ConvertError(f"rope type {dynamic[0]!r} rescales positions by the sequence length at run time, which "
                           "a fixed ONNX graph cannot follow; export a model with static RoPE (default, linear, "
                           "llama3, yarn) or use --format hf", path)
    rotary_layers(spec.config, spec.family_record, spec.dims.layers, path)
    if LONGROPE in _rope_types(spec.config) and spec.family_record.rope_per_layer_type:
        raise ConvertError("LongRoPE with one rotary table per layer type cannot be exported to ONNX; use --format hf",
                           path)
    if spec.config.get("use_bidirectional_attention"):
        raise ConvertError("'use_bidirectional_attention' is set (an embedding model); the ONNX exporter writes "
                           "causal decoders only", path)


@dataclass(frozen=True)
class LayerKind:
    """What distinguishes decoder layers in the graph: the sliding window, the rotary table and
    whether the layer applies it at all (SmolLM3's no-RoPE layers trace without the rotation)."""

    window: int | None
    rope: str
    rotary: bool = True

    @property
    def mask_name(self) -> str:
        return "attn_mask.full" if self.window is None else f"attn_mask.window{self.window}"


def layer_kinds(config: Any, family: Family) -> list[LayerKind]:
    """The kind of every decoder layer, in order."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    # Validated against config.json's path by check_supported before anything is traced.
    rotates = rotary_layers(config.to_dict(), family, config.num_hidden_layers, Path("config.json"))
    kinds = []
    for layer_type, rotary in zip(types[: config.num_hidden_layers], rotates):
        if family.sliding_window == "config":
            layer_window = window
        else:
            layer_window = window if layer_type == "sliding_attention" else None
        kinds.append(LayerKind(layer_window, layer_type if family.rope_per_layer_type else DEFAULT_ROPE, rotary))
    return kinds


class Prologue(nn.Module):
    """(input_ids, attention_mask, position_ids) -> (hidden, one mask per window, cos/sin per rotary table)."""

    def __init__(self, model: PreTrainedModel, kinds: list[LayerKind], family: Family) -> None:
        super().__init__()
        self.embed = model.get_input_embeddings()
        key = family.embedding_multiplier
        self.multiplier: float | None = float(getattr(model.config, key)) if key is not None else None
        self.rotary = LongRopeTables(model.model.rotary_emb, model.config) if is_longrope(model.config) \
            else model.model.rotary_emb
        self.windows = sorted({k.window for k in kinds}, key=lambda w: -1 if w is None else w)
        self.ropes = sorted({k.rope for k in kinds})

    def output_names(self) -> list[str]:
        masks = [LayerKind(w, DEFAULT_ROPE).mask_name for w in self.windows]
        return ["hidden", *masks, *[f"rope.{r}.{part}" for r in self.ropes for part in ("cos", "sin")]]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embed(input_ids)
        if self.multiplier is not None:
            hidden = hidden * self.multiplier
        seq_len, total = input_ids.shape[1], attention_mask.shape[1]
        query = torch.arange(seq_len, device=input_ids.device) + (total - seq_len)
        key = torch.arange(total, device=input_ids.device)
        allowed = (key[None, :] <= query[:, None])[None, None] & attention_mask.bool()[:, None, None, :]
        blocked = torch.finfo(torch.float32).min
        masks = []
        for window in self.windows:
            keep = allowed if window is None else allowed & (key[None, :] > query[:, None] - window)[None, None]
            masks.append(torch.where(keep, 0.0, blocked))
        tables = []
        for rope in self.ropes:
            args = (hidden, position_ids) if rope == DEFAULT_ROPE else (hidden, position_ids, rope)
            tables.extend(self.rotary(*args))
        return (hidden, *masks, *tables)


class LayerStep(nn.Module):
    """(hidden, mask, cos, sin, past key, past value) -> (hidden, present key, present value) for one layer."""

    INPUTS = ("hidden", "mask", "cos", "sin", "past_key", "past_value")
    OUTPUTS = ("hidden_out", "present_key", "present_value")

    def __init__(self, layer: nn.Module, index: int) -> None:
        super().__init__()
        self.layer = layer
        self.index = index

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(ddp_cache_data=[(past_key, past_value)] * (self.index + 1))
        out = self.layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=None, cache=cache,
                         use_cache=True)
        hidden = out[0] if isinstance(out, tuple) else out
        layer_cache: Any = cache.layers[self.index]  # a full-attention DynamicLayer: it has keys and values
        return hidden, layer_cache.keys, layer_cache.values


class Epilogue(nn.Module):
    """hidden -> logits: final norm, lm_head, the logits divisor (Granite) and the final soft-capping."""

    def __init__(self, model: PreTrainedModel, family: Family) -> None:
        super().__init__()
        self.norm = model.model.norm
        self.lm_head = model.lm_head
        applied = "final_logit_softcapping" in family.softcapping
        self.softcap = getattr(model.config, "final_logit_softcapping", None) if applied else None
        key = family.logits_divisor
        self.divisor: float | None = float(getattr(model.config, key)) if key is not None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(hidden))
        if self.divisor is not None:
            logits = logits / self.divisor
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
