"""fp16, int8 and int4 exports of tiny models, run in onnxruntime.

fp16 must keep the RMSNorm variance and the softmax in fp32 (no fp16 round trip in between): a
model whose residual stream exceeds 256 (its squares overflow fp16) still gives finite logits
close to the HF model's. int4 on a tied model
reads the embedding straight out of the lm_head's MatMulNBits weights (GatherBlockQuantized); the
lookup must return exactly the dequantized lm_head rows, for block sizes that do and do not
divide the hidden size, and the tied matrix is stored once; an untied embedding becomes its own
GatherBlockQuantized. int8 and int4 shrink the data file
as expected and still track the fp32 model.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from converter.pipeline import export
from converter.source import open_source
from exporters.onnx.assemble import DATA_NAME, MODEL_NAME
from exporters.onnx.precision import convert
from exporters.options import ExportOptions
from tests.support.onnx_runner import OnnxDecoder, max_rel_error, pruned_hf_model, reference_logits, teacher_forced
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

TRACED = {"sliding_window": 8}  # a tied Mistral with a window: a family the traced graph serves


def _ids(vocab: int, length: int = 28, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(seed).integers(3, vocab, size=(1, length))
    return ids, np.ones_like(ids)


@pytest.fixture(scope="module")
def traced(module_tmp: ModuleTmp) -> Path:
    """A tied Mistral with a sliding window exported in fp32 (the traced graph)."""
    root = module_tmp.mktemp("onnx-precision-traced")
    model = build_tiny_model("mistral", seed=2, tied=True, **TRACED)
    src = save_tiny_model(model, root / "in")
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=4)
    export(open_source(src), plan, root / "fp32", "onnx", ExportOptions(outtype="fp32", progress=False))
    return root / "fp32"


def _converted(fp32: Path, out: Path, outtype: str, block_size: int = 32) -> Path:
    shutil.copytree(fp32, out)
    convert(out / MODEL_NAME, outtype, block_size, DATA_NAME)
    return out


def _fp32_islands_are_fp32(graph: onnx.ModelProto) -> bool:
    """Every variance/softmax op reads fp32 that never went through fp16 since the cast from the residual.

    onnxruntime's CPU provider runs these ops in fp32 anyway (it has no fp16 kernels for them), so
    the graph itself is checked: GPU and mobile providers do run fp16 kernels.
    """
    producers = {o: n for n in graph.graph.node for o in n.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node and node.op_type == "Cast" else None

    for node in graph.graph.node:
        if node.op_type not in ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax"):
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type in ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Add"):
            continue
        if cast_to(source) != onnx.TensorProto.FLOAT or cast_to(producers.get(source.input[0])) is not None:
            return False
    return True


def test_fp16_keeps_large_activations_finite(tmp_path: Path) -> None:
    model = build_tiny_model("llama", seed=1, tied=False)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2000.0)
    src = save_tiny_model(model, tmp_path / "in")
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=1)
    export(open_source(src), plan, tmp_path / "fp16", "onnx", ExportOptions(outtype="fp16", progress=False))
    reference = pruned_hf_model(src, plan, tmp_path / "hf")
    ids, mask = _ids(cfg.vocab_size)
    with torch.no_grad():
        hidden = reference.model.embed_tokens(torch.from_numpy(ids))
    assert float(hidden.abs().max()) > 256
    decoder = OnnxDecoder(tmp_path / "fp16")
    assert decoder.float == np.float16
    assert _fp32_islands_are_fp32(onnx.load(tmp_path / "fp16" / MODEL_NAME, load_external_data=False))
    got = teacher_forced(decoder, ids, mask, 20)
    want = reference_logits(reference, ids, mask)
    assert np.isfinite(got).all()
    error = max_rel_error(got, want, mask.astype(bool))
    print(f"\nfp16 with a residual stream above 256: max |diff| / logit scale = {error:.2e}")
    assert error < 2e-2
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def _dequantized_lm_head(graph: onnx.ModelProto, folder: Path) -> tuple[onnx.NodeProto, np.ndarray]:
    """The GatherBlockQuantized node and the [vocab, hidden] matrix its lm_head MatMulNBits computes with."""
    inits = {t.name: t for t in graph.graph.initializer}
    lookup = next(n for n in graph.graph.node if n.op_type == "GatherBlockQuantized")
    matmul = next(n for n in graph.graph.node if n.op_type == "MatMulNBits" and n.input[2] == lookup.input[2])
    hidden = next(a.i for a in matmul.attribute if a.name == "K")
    packed, scales, *zeros = (onnx.numpy_helper.to_array(inits[name], base_dir=str(folder))
                              for name in matmul.input[1:4])
    vocab, blocks, _ = packed.shape
    values = np.stack([packed & 15, packed >> 4], -1).reshape(vocab, blocks, -1).astype(np.float32)
    zero = np.stack([zeros[0] & 15, zeros[0] >> 4], -1).reshape(vocab, -1)[:, :blocks, None].astype(np.float32) \
        if zeros else np.float32(8)  # symmetric (the default): codes offset by 8
    return lookup, ((values - zero) * scales[:, :, None]).reshape(vocab, -1)[:, :hidden]


def _subgraph(graph: onnx.ModelProto, folder: Path, start: str, end: str) -> onnx.ModelProto:
    """The nodes computing `end` from the value `start` and initializers, as a standalone model."""
    producers = {o: n for n in graph.graph.node for o in n.output}
    inits = {t.name: t for t in graph.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    used: set[str] = set()
    pending = [end]
    while pending:
        name = pending.pop()
        if name == start or name in used:
            continue
        used.add(name)
        if name not in inits:
            node = producers[name]
            nodes.insert(0, node)
            pending.extend(i for i in node.input if i)
    tensors = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(inits[n], base_dir=str(folder)), n)
               for n in sorted(used & set(inits))]
    inputs = [onnx.helper.make_tensor_value_info(start, onnx.TensorProto.INT64, [None])]
    outputs = [onnx.helper.make_tensor_value_info(end, onnx.TensorProto.FLOAT, None)]
    body = onnx.helper.make_graph(nodes, "lookup", inputs, outputs, tensors)
    return onnx.helper.make_model(body, opset_imports=list(graph.opset_import), ir_version=graph.ir_version)


@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_int4_tied_lookup_reads_the_lm_head_rows(traced: Path, tmp_path: Path, block_size: int) -> None:
    out = _converted(traced, tmp_path / "int4", "int4", block_size)
    graph = onnx.load(out / MODEL_NAME, load_external_data=False)
    lookup, table = _dequantized_lm_head(graph, out)
    vocab, hidden = table.shape
    assert not [t.name for t in graph.graph.initializer if sorted(t.dims) == sorted([vocab, hidden])]
    consumer = next(n for n in graph.graph.node if lookup.output[0] in n.input)
    result = consumer.output[0] if consumer.op_type == "Slice" else lookup.output[0]
    ids = np.array([0, 5, vocab - 1, 77], dtype=np.int64)
    session = ort.InferenceSession(_subgraph(graph, out, lookup.input[1], result).SerializeToString())
    got = session.run(None, {lookup.input[1]: ids})[0]
    np.testing.assert_array_equal(got, table[ids])


def test_int4_options_reach_the_traced_graph(traced: Path, tmp_path: Path) -> None:
    """Asymmetric (the traced graph's default) gives every MatMulNBits and the tied lookup zero points,
    --int4-symmetric none; --int4-accuracy-level is written into each MatMulNBits. The lookup still
    returns the rows the lm_head computes with."""
    for name, level, symmetric in (("default", 4, False), ("sym", 2, True)):
        out = tmp_path / name
        shutil.copytree(traced, out)
        convert(out / MODEL_NAME, "int4", 32, DATA_NAME, *((level, symmetric) if symmetric else ()))
        graph = onnx.load(out / MODEL_NAME, load_external_data=False)
        nodes = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
        attrs = {(len(n.input), next(a.i for a in n.attribute if a.name == "accuracy_level")) for n in nodes}
        assert nodes and attrs == {(3 if symmetric else 4, level)}
        lookup, table = _dequantized_lm_head(graph, out)
        assert len(lookup.input) == (3 if symmetric else 4)
        ids = np.array([0, 5, table.shape[0] - 1], dtype=np.int64)
        session = ort.InferenceSession(_subgraph(graph, out, lookup.input[1], lookup.output[0]).SerializeToString())
        np.testing.assert_array_equal(session.run(None, {lookup.input[1]: ids})[0][:, :table.shape[1]], table[ids])


def test_int4_tracks_fp32(traced: Path, tmp_path: Path) -> None:
    fp32, int4 = traced, _converted(traced, tmp_path / "int4", "int4")
    ratio = (int4 / DATA_NAME).stat().st_size / (fp32 / DATA_NAME).stat().st_size
    ids, mask = _ids(OnnxDecoder(fp32).session.get_outputs()[0].shape[2])
    want = teacher_forced(OnnxDecoder(fp32), ids, mask, 20)
    got = teacher_forced(OnnxDecoder(int4), ids, mask, 20)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"\ntiny traced mistral int4: {ratio:.3f} of the fp32 data, top-1 agreement {top1:.3f}")
    assert ratio < 0.25
    assert top1 >= 0.5  # random tiny weights: 4-bit noise flips many top-1s; a broken layout lands at 1/vocab


def test_int8_shrinks_and_tracks_fp32(traced: Path, tmp_path: Path) -> None:
    fp32, out = traced, _converted(traced, tmp_path / "int8", "int8")
    ratio = (out / DATA_NAME).stat().st_size / (fp32 / DATA_NAME).stat().st_size
    ids, mask = _ids(OnnxDecoder(fp32).session.get_outputs()[0].shape[2])
    want = teacher_forced(OnnxDecoder(fp32), ids, mask, 20)
    got = teacher_forced(OnnxDecoder(out), ids, mask, 20)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"\ntiny traced mistral int8: {ratio:.3f} of the fp32 data, top-1 agreement {top1:.3f}")
    assert ratio < 0.3
    assert top1 >= 0.8
    assert not list(out.glob("int8.*")), "the quantizer's intermediate files must not stay in the output"


def test_int4_untied_embedding_is_block_quantized_too(tmp_path: Path) -> None:
    model = build_tiny_model("qwen2", seed=6, tied=False)
    src = save_tiny_model(model, tmp_path / "in")
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=2)
    fp32 = tmp_path / "fp32"
    export(open_source(src), plan, fp32, "onnx", ExportOptions(outtype="fp32", progress=False))
    int4 = _converted(fp32, tmp_path / "int4", "int4")
    graph = onnx.load(int4 / MODEL_NAME, load_external_data=False)
    lookup = next(n for n in graph.graph.node if n.op_type == "GatherBlockQuantized")
    assert {a.name: a.i for a in lookup.attribute}["gather_axis"] == 0
    embedding = sorted([cfg.vocab_size, cfg.hidden_size])
    assert not [t.name for t in graph.graph.initializer
                if sorted(t.dims) == embedding and t.data_type == onnx.TensorProto.FLOAT]
    ratio = (int4 / DATA_NAME).stat().st_size / (fp32 / DATA_NAME).stat().st_size
    ids, mask = _ids(cfg.vocab_size)
    want = teacher_forced(OnnxDecoder(fp32), ids, mask, 20)
    got = teacher_forced(OnnxDecoder(int4), ids, mask, 20)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"\ntiny qwen2 (untied) int4: {ratio:.3f} of the fp32 data, top-1 agreement {top1:.3f}")
    assert ratio < 0.25
    assert top1 >= 0.5  # random tiny weights: 4-bit noise flips many top-1s; a broken layout lands at 1/vocab
