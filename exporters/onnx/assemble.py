"""Stitch the traced parts into one decoder graph and stream every weight into `model.onnx.data`.

Layer i is a copy of its kind's template with internal names prefixed `layers.{i}/`, its inputs
wired to the previous layer's output, the prologue's mask and rotary table for its kind and
`past_key_values.{i}.*`, and its parameter initializers renamed from the template layer to layer
i. Weights are then written straight from the PrunedCheckpoint, one tensor at a time, as
external data (exporters.onnx.external); the protobuf keeps only the graph and small constants.
Node metadata (Python stack traces) is dropped.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporters.onnx.external import ExternalData
from exporters.onnx.graph import GRAPH_INPUTS, TracedModel, TracedPart
from exporters.onnx.model import ExportModel

MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
PRODUCER = "compact-convert"


def _place(part: TracedPart, wires: dict[str, str], params: dict[str, str], prefix: str
           ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The part's nodes and constant initializers, renamed into the whole graph."""
    def rename(name: str) -> str:
        if not name:
            return name
        return wires.get(name) or params.get(name) or prefix + name

    nodes = []
    for source in part.proto.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in source.attribute):
            raise RuntimeError(f"traced node {source.name} has a subgraph; the assembler does not rename those")
        node = onnx.NodeProto()
        node.CopyFrom(source)
        node.ClearField("metadata_props")
        node.doc_string = ""
        node.name = prefix + node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        nodes.append(node)
    constants = []
    for source in part.proto.graph.initializer:
        if source.name in params:
            continue
        tensor = TensorProto()
        tensor.CopyFrom(source)
        tensor.name = rename(tensor.name)
        constants.append(tensor)
    return nodes, constants


def _layer_name(name: str, template: int, layer: int) -> str:
    stem = f"model.layers.{template}."
    if not name.startswith(stem):
        raise RuntimeError(f"template parameter {name} is not under {stem}")
    return f"model.layers.{layer}." + name[len(stem):]


def _io(built: ExportModel, layers: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    cfg = built.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    tokens, total = ["batch_size", "sequence_length"], ["batch_size", "total_sequence_length"]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, total),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, tokens)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*tokens, cfg.vocab_size])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                ["batch_size", kv_heads, "past_sequence_length", head_dim]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, ["batch_size", kv_heads, "total_sequence_length", head_dim]))
    return inputs, outputs


def assemble(traced: TracedModel, built: ExportModel, weights: Iterable[tuple[str, np.ndarray]], out_dir: Path) -> Path:
    """Write out_dir/model.onnx and out_dir/model.onnx.data; returns the graph path."""
    layers = len(traced.kinds)
    nodes: list[onnx.NodeProto] = []
    constants: list[TensorProto] = []
    expected: dict[str, tuple[int, ...]] = {}

    def add(part: TracedPart, wires: dict[str, str], params: dict[str, str], prefix: str) -> None:
        part_nodes, part_constants = _place(part, wires, params, prefix)
        nodes.extend(part_nodes)
        constants.extend(part_constants)
        for fqn, name in params.items():
            expected[name] = tuple(part.params[fqn].shape)

    wires = {name: name for name in (*GRAPH_INPUTS, *traced.prologue_outputs)}
    wires["hidden"] = "hidden.0"
    add(traced.prologue, wires, {f: built.name_of(p) for f, p in traced.prologue.params.items()}, "prologue/")
    for i, kind in enumerate(traced.kinds):
        template, part = traced.templates[kind]
        wires = {"hidden": f"hidden.{i}", "mask": kind.mask_name, "cos": f"rope.{kind.rope}.cos",
                 "sin": f"rope.{kind.rope}.sin", "past_key": f"past_key_values.{i}.key",
                 "past_value": f"past_key_values.{i}.value", "hidden_out": f"hidden.{i + 1}",
                 "present_key": f"present.{i}.key", "present_value": f"present.{i}.value"}
        params = {f: _layer_name(built.name_of(p), template, i) for f, p in part.params.items()}
        add(part, wires, params, f"layers.{i}/")
    add(traced.epilogue, {"hidden": f"hidden.{layers}", "logits": "logits"},
        {f: built.name_of(p) for f, p in traced.epilogue.params.items()}, "epilogue/")

    stored: list[TensorProto] = []
    with ExternalData(out_dir / DATA_NAME) as data:
        for name, array in weights:
            if expected.get(name) != tuple(array.shape) or array.dtype != np.float32:
                raise RuntimeError(f"weight {name} {array.dtype}{list(array.shape)} does not fit the graph "
                                   f"(expects float32{list(expected.get(name, ()))})")
            stored.append(data.add(name, TensorProto.FLOAT, list(array.shape), memoryview(np.ascontiguousarray(array))))
    missing = sorted(set(expected) - {t.name for t in stored})
    if missing:
        raise RuntimeError(f"no weights written for {', '.join(missing[:5])}")

    inputs, outputs = _io(built, layers)
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, initializer=constants + stored)
    opsets = {o.domain: o.version for part in _parts(traced) for o in part.proto.opset_import}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name=PRODUCER)
    model.ir_version = max(part.proto.ir_version for part in _parts(traced))
    path = out_dir / MODEL_NAME
    onnx.save_model(model, path)
    return path


def _parts(traced: TracedModel) -> list[TracedPart]:
    return [traced.prologue, *(part for _, part in traced.templates.values()), traced.epilogue]
