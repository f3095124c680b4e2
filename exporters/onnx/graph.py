"""Trace the prologue, one template decoder layer per layer kind, and the epilogue with torch.export.

Each part goes through the dynamo exporter (torch.export, then onnxscript's translation) with
dynamic batch, sequence and past axes; example inputs use distinct sizes (batch 2, 5 new tokens,
3 past) so no two axes are unified by accident. The parts are traced unoptimised: an optimiser
would fold weight-derived constants (Gemma's `1 + norm weight`) into the template, and the
template must stay a function of its layer's weights. onnxruntime folds constants at load time.
Parameter initializers are dropped from the traced graphs (the assembler streams the weights),
so no copy of a weight is held in a protobuf. The exporter's chatter on stderr (torchvision
ops it skips, onnx_ir's pass log, which onnxruntime's int4 quantizer switches on by calling
logging.basicConfig at import) is silenced, so a failure reads as the tool's one error line.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim

from converter.arch.families import Family
from exporters.onnx.model import ExportModel
from exporters.onnx.wrapper import Epilogue, LayerKind, LayerStep, Prologue, layer_kinds

OPSET = 18
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 5, 3
GRAPH_INPUTS = ("input_ids", "attention_mask", "position_ids")
QUIET_LOGGERS = {"torch.onnx._internal.exporter._registration": logging.ERROR, "onnx_ir": logging.WARNING}


@dataclass(frozen=True)
class TracedPart:
    """One traced part: its ONNX graph and, per parameter initializer, the parameter it holds."""

    proto: onnx.ModelProto
    params: dict[str, nn.Parameter]


@dataclass(frozen=True)
class TracedModel:
    """Everything the assembler needs: parts, each layer's kind and its template layer index."""

    prologue: TracedPart
    prologue_outputs: tuple[str, ...]
    templates: dict[LayerKind, tuple[int, TracedPart]]
    epilogue: TracedPart
    kinds: tuple[LayerKind, ...]


def template_layers(config: object, family: Family) -> set[int]:
    """The first layer of each kind: the only layers the trace needs weights for."""
    first: dict[LayerKind, int] = {}
    for index, kind in enumerate(layer_kinds(config, family)):
        first.setdefault(kind, index)
    return set(first.values())


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    loggers = {logging.getLogger(name): level for name, level in QUIET_LOGGERS.items()}
    previous = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in previous.items():
            logger.setLevel(level)


def _trace(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
           shapes: tuple[object, ...]) -> TracedPart:
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), args, dynamo=True, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=OPSET, optimize=False, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program for a dynamo trace")
    params = dict(module.named_parameters())
    for name in params:
        program.model.graph.initializers.pop(name, None)
    return TracedPart(ir.serde.serialize_model(program.model), params)


def trace(built: ExportModel, family: Family) -> TracedModel:
    """Trace the three kinds of part of the pruned model."""
    model = built.model
    cfg = model.config
    kinds = layer_kinds(cfg, family)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    batch, seq, past, total = Dim("batch_size"), Dim("sequence_length"), Dim("past_sequence_length"), Dim.AUTO
    b, s, p = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST

    prologue = Prologue(model, kinds, family)
    ids = (torch.arange(b * s, dtype=torch.int64) % cfg.vocab_size).reshape(b, s)
    positions = (torch.arange(s) + p).expand(b, s).contiguous()
    traced_prologue = _trace(prologue, (ids, torch.ones(b, p + s, dtype=torch.int64), positions),
                             list(GRAPH_INPUTS), prologue.output_names(),
                             ({0: batch, 1: seq}, {0: batch, 1: Dim("total_sequence_length")}, {0: batch, 1: seq}))

    # The rotary tables' width: head_dim, or its rotated part under a partial rotary factor (Phi-3).
    with torch.no_grad():
        rotary = prologue(ids, torch.ones(b, p + s, dtype=torch.int64), positions)[-1].shape[-1]
    templates: dict[LayerKind, tuple[int, TracedPart]] = {}
    for index, kind in enumerate(kinds):
        if kind in templates:
            continue
        past_kv = torch.zeros(b, kv_heads, p, head_dim)
        args = (torch.randn(b, s, cfg.hidden_size), torch.zeros(b, 1, s, p + s), torch.ones(b, s, rotary),
                torch.zeros(b, s, rotary), past_kv, past_kv.clone())
        tokens, cache = {0: batch, 1: seq}, {0: batch, 2: past}
        shapes = (tokens, {0: batch, 2: seq, 3: total}, tokens, tokens, cache, cache)
        step = LayerStep(model.model.layers[index], index)
        templates[kind] = (index, _trace(step, args, list(LayerStep.INPUTS), list(LayerStep.OUTPUTS), shapes))

    epilogue = _trace(Epilogue(model, family), (torch.randn(b, s, cfg.hidden_size),), ["hidden"], ["logits"],
                      ({0: batch, 1: seq},))
    return TracedModel(traced_prologue, tuple(prologue.output_names()), templates, epilogue, tuple(kinds))
