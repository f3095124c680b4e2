"""Weight precision of the exported graph: fp32 as traced, or fp16 / int8 / int4 by onnxruntime's tools.

fp16 converts every float tensor (inputs, outputs and the KV cache included) with onnxruntime's
float16 converter, except the RMSNorm variance and the softmax, which stay in fp32 behind casts
exactly where transformers upcasts them (squares of a residual stream above 256 overflow fp16).
int8 is onnxruntime's dynamic quantization (int8 MatMul weights, activations quantized at run
time). int4 is weight-only: onnxruntime's MatMulNBitsQuantizer turns every MatMul weight into a
`MatMulNBits` and the embedding into a `GatherBlockQuantized`, in blocks of `int4_block_size`
along the input axis, with zero points (asymmetric) unless --int4-symmetric asks for none, and
--int4-accuracy-level (default 4) on every MatMulNBits. The result always keeps all weights in one `model.onnx.data`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from converter.errors import ConvertError
from exporters.onnx.external import save_with_external_data

OUTTYPES = ("fp32", "fp16", "int8", "int4")
DEFAULT_OUTTYPE = "fp32"
FP32_SUBGRAPH_OPS = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax")


def check_outtype(outtype: str | None, block_size: int) -> str:
    """The out type to produce, or a ConvertError naming what onnxruntime can produce here."""
    chosen = (outtype or DEFAULT_OUTTYPE).lower()
    if chosen not in OUTTYPES:
        raise ConvertError(f"--outtype {outtype!r} is not an ONNX weight type compact-convert can produce with "
                           f"onnxruntime; choose one of {', '.join(OUTTYPES)}")
    if chosen == "int4":
        if block_size < 16 or block_size & (block_size - 1):
            raise ConvertError(f"--int4-block-size {block_size} must be a power of two, 16 or larger "
                               "(onnxruntime MatMulNBits)")
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: F401
        except ImportError:
            raise ConvertError("--outtype int4 needs onnxruntime's MatMulNBitsQuantizer, which the installed "
                               "onnxruntime lacks; upgrade onnxruntime") from None
    if chosen == "int8":
        try:
            from onnxruntime.quantization import quantize_dynamic  # noqa: F401
        except ImportError:
            raise ConvertError("--outtype int8 needs onnxruntime.quantization; reinstall onnxruntime") from None
    return chosen


def _fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that keep fp32: variance/softmax ops and the `+ eps` that follows each variance."""
    _name_nodes(model)
    keep = [n for n in model.graph.node if n.op_type in FP32_SUBGRAPH_OPS]
    means = {o for n in keep if n.op_type == "ReduceMean" for o in n.output}
    keep += [n for n in model.graph.node if n.op_type == "Add" and means.intersection(n.input)]
    return [n.name for n in keep]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 everywhere but the fp32 subgraph; `model` must carry inferred value types (the converter
    inserts the casts around blocked nodes from them), inferred before the weights were loaded."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True,
                                         node_block_list=_fp32_nodes(model))
    _drop_fp16_round_trips(converted)
    return converted


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Between two fp32 nodes the converter casts to fp16 and straight back, which overflows just
    like fp16 arithmetic would; wire the fp32 value through instead."""
    def target(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    rewired: dict[str, str] = {}
    for node in model.graph.node:
        first = producers.get(node.input[0]) if node.input else None
        if target(node) == onnx.TensorProto.FLOAT and first is not None and target(first) == onnx.TensorProto.FLOAT16 \
                and types.get(first.input[0]) == onnx.TensorProto.FLOAT and node.output[0] not in outputs:
            rewired[node.output[0]] = first.input[0]
    for node in model.graph.node:
        node.input[:] = [rewired.get(name, name) for name in node.input]
    kept = [n for n in model.graph.node if not set(rewired).intersection(n.output)]
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if not (n.op_type == "Cast" and not used.intersection(n.output))]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _name_nodes(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"node_{i}"


def _tied_lookup(model: onnx.ModelProto) -> tuple[str, str] | None:
    """Names of the (Gather axis 1, Transpose) pair reading embeddings out of a shared [hidden, vocab] lm_head."""
    initializers = {t.name for t in model.graph.initializer}
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type != "Gather" or axis != 1 or node.input[0] not in initializers & matmul_weights:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Transpose":
            return node.name, after[0].name
    return None


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _share_int4_lm_head(model: onnx.ModelProto, gather_name: str, transpose_name: str, block_size: int) -> None:
    """Read embeddings straight from the lm_head's MatMulNBits weights with GatherBlockQuantized.

    MatMulNBits stores B as [N=vocab, K blocks, block bytes]: row v is token v's embedding in
    4-bit blocks along hidden, the layout GatherBlockQuantized (gather_axis 0, uint8 data, bits 4)
    reads; onnxruntime-genai's builder shares tied embeddings the same way. The tied matrix thus
    stays stored once.
    """
    nodes = {n.name: n for n in model.graph.node}
    gather, transpose = nodes[gather_name], nodes[transpose_name]
    weight = gather.input[0]
    matmul = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == f"{weight}_Q4")
    attrs = {a.name: a.i for a in matmul.attribute}
    hidden, vocab = attrs["K"], attrs["N"]
    padded = -(-hidden // block_size) * block_size
    rows, looked_up = f"{weight}_rows", transpose.output[0]
    model.graph.initializer.append(_int64(f"{rows}_shape", [vocab, padded // 2]))
    new = [onnx.helper.make_node("Reshape", [matmul.input[1], f"{rows}_shape"], [rows], name=f"{gather.name}_rows")]
    if padded != hidden:
        looked_up = f"{transpose.output[0]}_padded"
        for suffix, value in (("starts", 0), ("ends", hidden), ("axes", 1)):
            model.graph.initializer.append(_int64(f"{weight}_unpad_{suffix}", [value]))
    new.append(onnx.helper.make_node("GatherBlockQuantized", [rows, gather.input[1], *matmul.input[2:4]],
                                     [looked_up], name=f"{gather.name}_Q4", domain="com.microsoft", bits=4,
                                     block_size=block_size, gather_axis=0, quantize_axis=1))
    if padded != hidden:
        bounds = [f"{weight}_unpad_{s}" for s in ("starts", "ends", "axes")]
        new.append(onnx.helper.make_node("Slice", [looked_up, *bounds], [transpose.output[0]],
                                         name=f"{gather.name}_unpad"))
    index = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    model.graph.node.remove(transpose)
    for offset, node in enumerate(new):
        model.graph.node.insert(index + offset, node)
    if not any(weight in n.input for n in model.graph.node):
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == weight))


def to_int4(model: onnx.ModelProto, block_size: int, accuracy_level: int = 4,
            symmetric: bool = False) -> onnx.ModelProto:
    """MatMul weights as MatMulNBits; the embedding as GatherBlockQuantized (shared with a tied lm_head)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    _name_nodes(model)
    tied = _tied_lookup(model)
    # onnxruntime's quantizer leaves accuracy_level 0 out of the node, which means the same.
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level or None,
                                     op_types_to_quantize=("MatMul",) if tied else ("MatMul", "Gather"),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    quantized = quantizer.model.model
    if tied is not None:
        _share_int4_lm_head(quantized, *tied, block_size)
    return quantized


def to_int8(src: Path, dest: Path) -> None:
    """Dynamic quantization: int8 weights (per tensor), activations quantized per call at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dest, op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8,
                     per_channel=False, use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": True})


@contextmanager
def _quiet_quantizers() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO and advise pre-processing at WARNING."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def convert(path: Path, outtype: str, block_size: int, data_name: str, accuracy_level: int = 4,
            symmetric: bool = False) -> None:
    """Rewrite the fp32 graph at `path` (and its data file) in place as `outtype`; int4 in blocks of
    `block_size` with MatMulNBits' `accuracy_level`, symmetric or with zero points."""
    if outtype == "fp32":
        return
    with _quiet_quantizers():
        if outtype == "int8":
            staged = path.with_name("int8." + path.name)
            to_int8(path, staged)
            _restage(staged, path, data_name)
            return
        model = onnx.load_model(path, load_external_data=False)
        if outtype == "fp16":
            model = onnx.shape_inference.infer_shapes(model)
        onnx.load_external_data_for_model(model, str(path.parent))
        model = to_fp16(model) if outtype == "fp16" else to_int4(model, block_size, accuracy_level, symmetric)
        save_with_external_data(model, path, data_name)


def _restage(staged: Path, path: Path, data_name: str) -> None:
    model = onnx.load_model(staged, load_external_data=True)
    for f in staged.parent.iterdir():
        if f.name.startswith(staged.name):
            f.unlink()
    save_with_external_data(model, path, data_name)
