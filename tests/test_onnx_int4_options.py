"""The ONNX int4 options (--int4-accuracy-level, --int4-symmetric/--no-int4-symmetric, --int4-lm-head).

A tiny tied Llama (fused graph; the tied embedding reads the LM head's storage, so the head's type
reaches the embedding lookup too) and an untied one (its own int4 embedding table) are pruned and
exported in fp32 and int4 under each option. Each option must show in the graph as stated (node
attributes, MatMulNBits / GatherBlockQuantized input counts, initializer types and shapes, the
report's output types read back from the graph), the
model must still run in onnxruntime and track the fp32 export: asymmetric int4's relative RMS
logit error within 1.2x of symmetric's, an int8 head's top-1 agreement with the fp32 head on the
same int4 body >= 0.9, an fp16 head's logits within 2e-2 of the fp32 head's. onnxruntime-genai
loads and generates from the asymmetric exports (the same tokens as a plain onnxruntime loop).
The asymmetric block quantizer equals onnxruntime's own (codes, scales, packed zero points).
The traced graph (Gemma) refuses --int4-lm-head by name (its int4 conversion honouring symmetry and
accuracy level is tests/test_onnx_precision.py's).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import json

import numpy as np
import onnx
import pytest

from converter.errors import ConvertError
from converter.pipeline import export
from converter.source import open_source
from exporters.onnx.fused.quantize import dequantize_blocks, quantize_blocks
from exporters.options import ExportOptions
from tests.support.onnx_runner import OnnxDecoder, genai_greedy, greedy, teacher_forced
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {"outtype": "fp32"},
    "sym": {"outtype": "int4"},
    "asym": {"outtype": "int4", "int4_symmetric": False},
    "level0": {"outtype": "int4", "int4_accuracy_level": 0},
    "head8": {"outtype": "int4", "int4_lm_head": "int8"},
    "head16": {"outtype": "int4", "int4_lm_head": "fp16"},
    "head32": {"outtype": "int4", "int4_lm_head": "fp32"},
}
PREFILL = 20


@dataclass(frozen=True)
class Exports:
    tied: bool
    folders: dict[str, Path]
    logits: dict[str, np.ndarray]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exports(request: pytest.FixtureRequest, module_tmp: ModuleTmp,
            byte_level_tokenizer_dir: Path) -> Exports:
    tied = request.param
    root = module_tmp.mktemp(f"int4-options-{'tied' if tied else 'untied'}")
    model = build_tiny_model("llama", seed=0, tied=tied)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=1)
    ids = np.random.default_rng(6).integers(3, 1500, size=(4, PREFILL + 16))
    folders, logits = {}, {}
    for name, fields in VARIANTS.items():
        folders[name] = root / name
        export(open_source(src), plan, folders[name], "onnx",
               ExportOptions(progress=False, report_plots=False, **fields))  # type: ignore[arg-type]
        logits[name] = teacher_forced(OnnxDecoder(folders[name]), ids, np.ones_like(ids), PREFILL)
    return Exports(tied, folders, logits)


def _graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(folder / "model.onnx", load_external_data=False).graph


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _nodes(folder: Path, op: str) -> list[onnx.NodeProto]:
    return [n for n in _graph(folder).node if n.op_type == op]


def _head_type(folder: Path) -> str:
    """The LM head's type in report.json's output types (read back from the written graph)."""
    section = json.loads((folder / "report.json").read_text())["output_types"]
    return next(k["type"] for k in section["kinds"] if k["kind"].startswith("lm_head."))


def _top1(got: np.ndarray, want: np.ndarray) -> float:
    return float((got.argmax(-1) == want.argmax(-1)).mean())


def _rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))


def test_accuracy_level_is_written_into_every_matmulnbits(exports: Exports) -> None:
    for name, level in (("sym", 4), ("level0", 0)):
        nodes = _nodes(exports.folders[name], "MatMulNBits")
        assert len(nodes) == 4 * 2 + 1 and {_attrs(n)["accuracy_level"] for n in nodes} == {level}
    assert _top1(exports.logits["level0"], exports.logits["fp32"]) >= 0.5
    assert _head_type(exports.folders["level0"]) == "int4 MatMulNBits (block 32, accuracy level 0)"


def test_asymmetric_writes_zero_points_and_tracks_fp32(exports: Exports) -> None:
    graph = _graph(exports.folders["asym"])
    inits = {t.name: t for t in graph.initializer}
    blocked = [n for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert len(blocked) == 4 * 2 + 2
    for node in blocked:
        assert len(node.input) == 4, node.name
        scales, zeros = inits[node.input[2]], inits[node.input[3]]
        assert zeros.data_type == onnx.TensorProto.UINT8
        rows, blocks = scales.dims
        assert list(zeros.dims) == [rows, (blocks + 1) // 2]  # two 4-bit zero points a byte
    assert any(inits[n.input[3]].dims[-1] * 2 > inits[n.input[2]].dims[-1] for n in blocked)  # an odd block count
    sym = _graph(exports.folders["sym"])
    assert {len(n.input) for n in sym.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")} == {3}
    assert not [t for t in sym.initializer if t.name.endswith("zero_points")]
    assert _head_type(exports.folders["asym"]) == "int4 MatMulNBits (block 32, zero points, accuracy level 4)"
    want = exports.logits["fp32"]
    asym, symmetric = _rms(exports.logits["asym"], want), _rms(exports.logits["sym"], want)
    print(f"\ntied={exports.tied} int4 relative RMS logit error vs fp32: symmetric {symmetric:.4f}, asymmetric "
          f"{asym:.4f}; top-1 {_top1(exports.logits['sym'], want):.3f} / {_top1(exports.logits['asym'], want):.3f}")
    assert not np.allclose(exports.logits["asym"], exports.logits["sym"])
    assert asym <= 1.2 * symmetric
    assert _top1(exports.logits["asym"], want) >= 0.5


def test_genai_generates_from_the_asymmetric_export(exports: Exports) -> None:
    prompt = [1, *np.random.default_rng(9).integers(3, 1500, size=23).tolist()]
    tokens = genai_greedy(exports.folders["asym"], prompt, 16)
    assert len(tokens) == 16
    assert tokens == greedy(OnnxDecoder(exports.folders["asym"]), prompt, 16)


def test_int8_head(exports: Exports) -> None:
    graph = _graph(exports.folders["head8"])
    head = next(n for n in graph.node if n.output[0] == "logits")
    assert head.op_type == "MatMulNBits" and _attrs(head)["bits"] == 8
    assert {_attrs(n)["bits"] for n in graph.node if n.op_type == "MatMulNBits" and n is not head} == {4}
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert _attrs(lookup)["bits"] == (8 if exports.tied else 4)
    top1 = _top1(exports.logits["head8"], exports.logits["head32"])
    print(f"\ntied={exports.tied} int4 body: int8 head's top-1 agreement with the fp32 head {top1:.3f}, with the "
          f"fp32 export {_top1(exports.logits['head8'], exports.logits['fp32']):.3f}")
    assert top1 >= 0.9
    assert _head_type(exports.folders["head8"]) == "int8 MatMulNBits (block 32, accuracy level 4)"


@pytest.mark.parametrize("head,data_type", [("head16", onnx.TensorProto.FLOAT16), ("head32", onnx.TensorProto.FLOAT)])
def test_float_head(exports: Exports, head: str, data_type: int) -> None:
    graph = _graph(exports.folders[head])
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    assert inits[matmul.input[1]].data_type == data_type
    assert len([n for n in graph.node if n.op_type == "MatMulNBits"]) == 4 * 2
    casts = [n for n in graph.node if n.op_type == "Cast" and not n.name.startswith("mask/")]
    assert len(casts) == (0 if data_type == onnx.TensorProto.FLOAT else 2 + exports.tied)
    assert producers["logits"].op_type == ("MatMul" if data_type == onnx.TensorProto.FLOAT else "Cast")
    assert [n.op_type for n in graph.node].count("GatherBlockQuantized") == (0 if exports.tied else 1)
    assert _head_type(exports.folders[head]) == ("float16" if head == "head16" else "float")
    error = _rms(exports.logits[head], exports.logits["head32"])
    print(f"\ntied={exports.tied} {head}: relative RMS logit error vs the fp32 head {error:.2e}")
    assert error <= 2e-2


@pytest.mark.parametrize("bits,cols,block", [(4, 96, 32), (4, 80, 32), (4, 64, 16), (8, 96, 32), (8, 4096, 32)])
def test_asymmetric_quantizer_equals_onnxruntimes(bits: int, cols: int, block: int) -> None:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows = 40
    weight = np.random.default_rng(cols + bits).standard_normal((rows, cols)).astype(np.float32)
    blocks, per_byte = -(-cols // block), 8 // bits
    packed = np.zeros((rows, blocks, block * bits // 8), np.uint8)
    scales = np.zeros(rows * blocks, np.float32)
    zeros = np.zeros(rows * -(-blocks // per_byte), np.uint8)
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantize(packed, np.ascontiguousarray(weight.T), scales, zeros, block, rows, cols, False)
    ours = quantize_blocks(weight, bits, block, symmetric=False)
    assert ours.zero_points is not None
    np.testing.assert_array_equal(ours.scales.reshape(-1), scales)
    np.testing.assert_array_equal(ours.zero_points.reshape(-1), zeros)
    theirs = type(ours)(packed, scales.reshape(rows, blocks), zeros.reshape(rows, -1))
    np.testing.assert_array_equal(dequantize_blocks(ours, bits, cols), dequantize_blocks(theirs, bits, cols))
    error = np.abs(dequantize_blocks(ours, bits, cols) - weight).max(axis=1)
    spread = weight.max(axis=1) - np.minimum(weight.min(axis=1), 0)
    assert (error <= spread / ((1 << bits) - 1) + 1e-6).all()


def test_traced_graph_refuses_a_head_type_by_name(tmp_path: Path) -> None:
    """Mistral with a window takes the traced graph, whose int4 conversion (exporters.onnx.precision) honours
    symmetry and accuracy level (tests/test_onnx_precision.py) but has no other head type: refused before any work."""
    src = open_source(save_tiny_model(build_tiny_model("mistral", seed=2, vocab_size=300), tmp_path / "in"))
    plan = random_plan(300, 160, 2, None, 96, seed=2)
    with pytest.raises(ConvertError, match=r"--int4-lm-head int8 .*llama \(traced"):
        export(src, plan, tmp_path / "head", "onnx", ExportOptions(outtype="int4", int4_lm_head="int8",
                                                                    progress=False))
    assert not (tmp_path / "head").exists()


def test_lm_head_needs_int4_and_levels_are_checked(tmp_path: Path) -> None:
    src = open_source(save_tiny_model(build_tiny_model("llama", seed=3, vocab_size=300), tmp_path / "in"))
    plan = random_plan(300, 160, 2, None, 96, seed=3)
    with pytest.raises(ConvertError, match=r"--int4-lm-head fp16 .*int8"):
        export(src, plan, tmp_path / "out", "onnx", ExportOptions(outtype="int8", int4_lm_head="fp16",
                                                                   progress=False))
    with pytest.raises(ConvertError, match="--int4-accuracy-level"):
        ExportOptions(int4_accuracy_level=5)


def test_flags_fill_the_options() -> None:
    """The one-shot command's parser (flags generated from ExportOptions) sets the four fields; the accuracy
    level's default follows --ep."""
    from converter.commands import convert
    from converter.commands.flags import options_from

    parser = convert.build_parser()
    given = ["in", "out", "--int4-accuracy-level", "1", "--no-int4-symmetric", "--int4-lm-head", "int8", "--ep", "cuda"]
    options = options_from(parser.parse_args(given), ExportOptions)
    got = (options.accuracy_level, options.int4_symmetric, options.int4_lm_head, options.ep)
    assert got == (1, False, "int8", "cuda")
    defaults = options_from(parser.parse_args(["in", "out"]), ExportOptions)
    got = (defaults.accuracy_level, defaults.int4_symmetric, defaults.int4_lm_head, defaults.ep)
    assert got == (4, None, None, "cpu")
    assert options_from(parser.parse_args(["in", "out", "--ep", "dml"]), ExportOptions).accuracy_level == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["in", "out", "--int4-accuracy-level", "5"])
