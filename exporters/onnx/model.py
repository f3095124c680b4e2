"""Build the pruned model for export: transformers' own classes, pruned weights, MatMul layout.

The model is constructed from the pruned config (a multimodal checkpoint's text model config:
exporters.onnx.text_config) with every parameter on the meta device (no random weights are
allocated or initialised; buffers such as rotary frequencies are computed as usual). Tracing
only needs shapes: torch.export runs on fake tensors and the traced graphs keep no initializer
data, so the parameters the trace touches (embedding, final norm, lm_head and the template
layers) get uninitialised CPU placeholders, never read, never resident. Every real weight
reaches the ONNX data file later, one tensor at a time, through `export_weights`.

Each `nn.Linear` becomes a `MatMulLinear` holding its weight transposed, [in, out], which is
what ONNX `MatMul` and onnxruntime's quantizers expect, so the graph carries no Transpose per
weight. With tied embeddings the single [hidden, vocab] matrix serves both the lm_head MatMul
and the embedding lookup (a Gather along axis 1), so it is stored once.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from converter.io.dtypes import raw_to_torch
from converter.prune import PlannedTensor, PrunedCheckpoint
from exporters.onnx.experts import ExpertPart, densify_moe_blocks, expert_arrays, expert_parts, part_shape
from exporters.onnx.text_config import text_model_config

Holders = list[tuple[nn.Module, str]]  # (module, attribute) pairs that hold one tensor


class MatMulLinear(nn.Module):
    """`nn.Linear` with its weight stored [in, out], so the export is a plain MatMul on an initializer."""

    def __init__(self, weight_t: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight_t = weight_t
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


class ColumnEmbedding(nn.Module):
    """Embedding lookup in a [hidden, vocab] matrix shared with the lm_head: Gather on axis 1."""

    def __init__(self, weight_t: nn.Parameter, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_t = weight_t
        if scale is not None:
            self.register_buffer("embed_scale", scale.detach().clone(), persistent=False)
        else:
            self.embed_scale = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        columns = torch.index_select(self.weight_t, 1, input_ids.reshape(-1))
        out = columns.t().reshape(*input_ids.shape, self.weight_t.shape[0])
        return out if self.embed_scale is None else out * self.embed_scale.to(out.dtype)


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor lives in the export model, and whether it is stored transposed."""

    holders: tuple[tuple[nn.Module, str], ...]
    transpose: bool
    layer: int | None


@dataclass(frozen=True)
class ExportModel:
    """The HF model (traced parts as placeholders, the rest on meta) and where each checkpoint tensor goes."""

    model: PreTrainedModel
    slots: dict[str, Slot]
    names: dict[int, str]
    # Router and expert checkpoint tensors: the 2-D DenseMoe parameters each feeds (exporters.onnx.experts).
    experts: dict[str, tuple[tuple[ExpertPart, Slot], ...]] = field(default_factory=dict)

    def name_of(self, param: nn.Parameter) -> str:
        """The ONNX initializer name of a parameter (its path in the model; `weight_t` when transposed)."""
        return self.names[id(param)]


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter on the meta device while buffers stay real (like accelerate's
    init_empty_weights(include_buffers=False)): no weight memory is touched, rotary tables are right."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def hf_config(pruned: PrunedCheckpoint):
    """The transformers config of the pruned model, with eager attention (explicit, traceable masks)."""
    raw = text_model_config(pruned)
    config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    config._attn_implementation = "eager"
    config.use_cache = True
    return config


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _meta_param(shape: torch.Size | tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.empty(tuple(shape), device="meta"), requires_grad=False)


def _to_matmul_layout(model: PreTrainedModel, tied: bool, scaled: bool) -> dict[str, tuple[Holders, bool]]:
    """Swap Linear (and, when tied, the embedding) for MatMul-layout modules; map checkpoint names to holders.

    `scaled`: the family multiplies embeddings by sqrt(hidden), a factor transformers keeps as the
    embedding module's `embed_scale`, which the shared-matrix lookup then applies too."""
    slots: dict[str, tuple[Holders, bool]] = {}
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        if tied and name == "lm_head":
            continue
        bias = _meta_param(linear.bias.shape) if linear.bias is not None else None
        new = MatMulLinear(_meta_param(linear.weight.shape[::-1]), bias)
        _set_module(model, name, new)
        slots[f"{name}.weight"] = ([(new, "weight_t")], True)
        if bias is not None:
            slots[f"{name}.bias"] = ([(new, "bias")], False)
    embed_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    if tied:
        embed: Any = model.get_input_embeddings()  # an nn.Embedding subclass; its attributes are read by name
        scale = cast(torch.Tensor, embed.embed_scale) if scaled else None
        column = ColumnEmbedding(_meta_param(embed.weight.shape[::-1]), scale)
        head = MatMulLinear(column.weight_t, None)
        _set_module(model, embed_name, column)
        _set_module(model, "lm_head", head)
        slots[f"{embed_name}.weight"] = ([(column, "weight_t"), (head, "weight_t")], True)
    for name, _ in model.named_parameters():
        if name not in slots and not name.endswith("weight_t"):
            module_name, _, attr = name.rpartition(".")
            slots[name] = ([(model.get_submodule(module_name), attr)], False)
    return slots


def _as_float32(pruned: PrunedCheckpoint, planned: PlannedTensor, transpose: bool) -> torch.Tensor:
    value = raw_to_torch(pruned.read(planned), planned.dtype, planned.shape).to(torch.float32)
    return value.t().contiguous() if transpose else value


def build_model(pruned: PrunedCheckpoint, template_layers: set[int]) -> ExportModel:
    """The pruned model's structure in float32, eager attention, checked against the checkpoint shapes.

    Parameters outside the decoder layers and those of `template_layers` are placeholders for
    tracing; all others stay on the meta device.
    """
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(hf_config(pruned), dtype=torch.float32)
    if pruned.spec.dims.experts:
        densify_moe_blocks(model)
    tied = pruned.spec.tied_embeddings
    raw_slots = _to_matmul_layout(model, tied, pruned.spec.family_record.embed_scale_sqrt_hidden)
    slots: dict[str, Slot] = {}
    experts: dict[str, tuple[tuple[ExpertPart, Slot], ...]] = {}
    for planned in pruned.planned():
        if pruned.spec.passes_through(planned.name):
            continue  # another tower of a multimodal checkpoint (vision, projector): not in the text graph
        name = planned.name.removeprefix(pruned.spec.family_record.text_prefix)
        if tied and name == "lm_head.weight":
            continue
        parts = expert_parts(pruned, planned)
        if parts is not None:
            experts[planned.name] = tuple((part, _place(raw_slots, part.param, part_shape(planned, part),
                                                        planned.layer, template_layers)) for part in parts)
            continue
        if name not in raw_slots:
            raise RuntimeError(f"{planned.name} has no place in {type(model).__name__}")
        holders, transpose = raw_slots[name]
        spec_slot = pruned.spec.slot(planned.name)
        slot = Slot(tuple(holders), transpose, spec_slot.layer if spec_slot else None)
        slots[planned.name] = slot
        expected = tuple(getattr(*holders[0]).shape)
        shape = planned.shape[::-1] if transpose else planned.shape
        if expected != tuple(shape):
            raise RuntimeError(f"{planned.name}: model expects {list(expected)}, checkpoint gives {list(shape)}")
        if slot.layer is None or slot.layer in template_layers:
            param = nn.Parameter(torch.empty(expected, dtype=torch.float32), requires_grad=False)
            for module, attr in holders:
                setattr(module, attr, param)
    names = {id(p): n for n, p in model.named_parameters()}
    return ExportModel(model.eval(), slots, names, experts)


def _place(raw_slots: dict[str, tuple[Holders, bool]], name: str, shape: tuple[int, ...], layer: int | None,
           template_layers: set[int]) -> Slot:
    """The slot of one expert or router parameter, shape-checked, with a placeholder in template layers."""
    if name not in raw_slots:
        raise RuntimeError(f"{name} has no place in the exported MoE block")
    holders, transpose = raw_slots[name]
    expected = tuple(getattr(*holders[0]).shape)
    if expected != (shape[::-1] if transpose else shape):
        raise RuntimeError(f"{name}: model expects {list(expected)}, checkpoint gives {list(shape)}")
    if layer in template_layers:
        param = nn.Parameter(torch.empty(expected, dtype=torch.float32), requires_grad=False)
        for module, attr in holders:
            setattr(module, attr, param)
    return Slot(tuple(holders), transpose, layer)


def export_weights(pruned: PrunedCheckpoint, built: ExportModel) -> Iterator[tuple[str, np.ndarray]]:
    """Every weight as (initializer name, float32 array in MatMul layout), one tensor at a time."""
    for planned in pruned.planned():
        placed = built.experts.get(planned.name)
        if placed is not None:
            slot_of = dict(placed)
            for part, value in expert_arrays(pruned, planned, tuple(slot_of)):
                target = slot_of[part]
                module, attr = target.holders[0]
                array = (value.t().contiguous() if target.transpose else value).numpy()
                yield built.name_of(getattr(module, attr)), array
            continue
        slot = built.slots.get(planned.name)
        if slot is None:
            continue
        module, attr = slot.holders[0]
        yield built.name_of(getattr(module, attr)), _as_float32(pruned, planned, slot.transpose).numpy()
