"""--ep: the ONNX export written for an onnxruntime execution provider, as onnxruntime-genai's builder does.

On a GPU provider (cuda, dml, webgpu) an int4 model on the fused graph computes in fp16 (fp16
inputs, cache, scales, norms and rotary tables; the builder's io dtype for int4 there),
MatMulNBits' accuracy_level defaults to the builder's choice (0 on cuda and dml, 4 on webgpu; a
given --int4-accuracy-level wins), and genai_config.json names the provider with the builder's
options; cpu is unchanged. No GPU runtime is installed here, so the fp16 graph is run on
onnxruntime's CPU provider, whose contrib kernels take fp16 too: it must track the fp32 export as
closely as the CPU int4 graph does. The traced graph keeps its types and only names the provider.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.cli import main
from converter.pipeline import export
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.onnx_runner import OnnxDecoder, teacher_forced
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model


def _source(tmp_path: Path, family: str, **overrides: object) -> tuple[Path, object]:
    model = build_tiny_model(family, seed=0, tied=True, **overrides)
    src = save_tiny_model(model, tmp_path / f"in-{family}")
    cfg = model.config
    return src, random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=1)


def _graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(folder / "model.onnx", load_external_data=False).graph


def _nbits_levels(folder: Path) -> set[int]:
    """accuracy_level of every MatMulNBits (absent means 0, as onnxruntime's quantizer writes it)."""
    nodes = [n for n in _graph(folder).node if n.op_type == "MatMulNBits"]
    assert nodes
    return {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nodes}


def _providers(folder: Path) -> list[dict]:
    return json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["session_options"][
        "provider_options"]


@pytest.mark.parametrize("family,overrides", [
    ("llama", {}),
    ("gemma3_text", {"query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]}),
])
def test_cuda_int4_computes_in_fp16_and_tracks_fp32(tmp_path: Path, family: str, overrides: dict) -> None:
    src, plan = _source(tmp_path, family, **overrides)
    outs = {name: tmp_path / name for name in ("fp32", "cpu", "cuda")}
    export(open_source(src), plan, outs["fp32"], "onnx", ExportOptions(outtype="fp32", progress=False))
    export(open_source(src), plan, outs["cpu"], "onnx", ExportOptions(outtype="int4", progress=False))
    export(open_source(src), plan, outs["cuda"], "onnx", ExportOptions(outtype="int4", ep="cuda", progress=False))
    graph = _graph(outs["cuda"])
    float_io = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output] if v.name != "input_ids"
                and v.name != "attention_mask"}
    assert set(float_io.values()) == {onnx.TensorProto.FLOAT16}
    scales = [t for t in graph.initializer if t.name.endswith("weight_scales")]
    assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    assert _nbits_levels(outs["cuda"]) == {0} and _nbits_levels(outs["cpu"]) == {4}
    assert _providers(outs["cuda"]) == [{"cuda": {"enable_cuda_graph": "0"}}] and _providers(outs["cpu"]) == []
    vocab = len(json.loads((outs["fp32"] / "prune_plan.json").read_text())["kept_token_ids"])
    ids = np.random.default_rng(6).integers(3, vocab, size=(2, 36))
    mask = np.ones_like(ids)
    want = teacher_forced(OnnxDecoder(outs["fp32"]), ids, mask, 20)
    top1 = {name: float((teacher_forced(OnnxDecoder(outs[name]), ids, mask, 20).argmax(-1) == want.argmax(-1)).mean())
            for name in ("cpu", "cuda")}
    print(f"\n{family} int4 top-1 agreement with fp32: cpu {top1['cpu']:.3f}, cuda (fp16) {top1['cuda']:.3f}")
    assert top1["cuda"] >= top1["cpu"] - 0.05


def test_accuracy_level_follows_the_provider_unless_given(tmp_path: Path) -> None:
    src, plan = _source(tmp_path, "qwen3")
    for ep, level, want in (("webgpu", None, 4), ("dml", None, 0), ("cuda", 2, 2)):
        out = tmp_path / f"{ep}-{level}"
        export(open_source(src), plan, out, "onnx", ExportOptions(outtype="int4", ep=ep, int4_accuracy_level=level,
                                                                  progress=False))
        assert _nbits_levels(out) == {want}
        assert list(_providers(out)[0]) == [ep]


def test_traced_graph_names_the_provider_and_keeps_its_types(tmp_path: Path) -> None:
    src, plan = _source(tmp_path, "mistral", sliding_window=8)
    out = tmp_path / "dml"
    main(["export", str(src), str(out), "--format", "onnx", "--plan", _saved(plan, tmp_path), "--outtype", "int4",
          "--ep", "dml", "--no-progress", "--no-report"])
    assert _providers(out) == [{"dml": {"enable_graph_capture": "1"}}]
    assert "GroupQueryAttention" not in [n.op_type for n in _graph(out).node]
    assert _graph(out).input[2].name == "position_ids"  # the traced graph's layout
    assert {v.type.tensor_type.elem_type for v in _graph(out).output} == {onnx.TensorProto.FLOAT}
    assert _nbits_levels(out) == {0}


def test_unknown_provider_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, plan = _source(tmp_path, "llama")
    with pytest.raises(SystemExit):
        main(["export", str(src), str(tmp_path / "out"), "--format", "onnx", "--plan", _saved(plan, tmp_path),
              "--ep", "tpu"])
    assert "--ep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _saved(plan: object, tmp_path: Path) -> str:
    path = tmp_path / "plan.json"
    plan.save(path)  # type: ignore[attr-defined]
    return str(path)
