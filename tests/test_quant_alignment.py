"""Quantisation-aware sizes: FFN widths on the out type's block grid, fallbacks read back and reported.

A tiny Llama with hidden size 256 (so llama.cpp's K-quants apply to every weight) and two layers
(so q4_k_m gives ffn_down both Q4_K and Q6_K) is exported as q4_k_m dense, with a hand-written
plan whose FFN width (480) is not a multiple of 256, and with one that is (256). The types are
read back with gguf-py (and with the exporter's own header reader, which must agree) and compared
tensor by tensor with the dense export's; the fallback plan must warn in exactly one line and the
report must list the types and the bytes without fallback. The ONNX int4 report shows the zero
padding of a row that is not whole blocks. The grid data is checked against gguf-py's block
sizes and the GGUF exporter's out types.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from converter.pipeline import export
from converter.errors import ConvertError
from converter.row_grid import (GGUF_FLOAT, GGUF_ROW_BLOCKS, K_QUANT_BLOCK, LEGACY_BLOCK, ONNX_BLOCKED, ONNX_FLOAT,
                                row_block)
from converter.score.stage_options import Budget
from converter.source import open_source
from exporters.gguf.quant import OUTTYPES
from exporters.gguf.written_types import FALLBACK, MIXTURE_TYPES, read_types
from exporters.onnx.precision import OUTTYPES as ONNX_OUTTYPES
from exporters.options import ExportOptions
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

Q = GGMLQuantizationType
HIDDEN, FFN, LAYERS, VOCAB = 256, 512, 2, 2000
OUR_WARNING = "warning: --outtype"


@pytest.fixture(scope="module")
def source_dir(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    model = build_tiny_model("llama", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, head_dim=64,
                             num_hidden_layers=LAYERS)
    return save_tiny_model(model, module_tmp.mktemp("k-quant-model") / "in",
                           tokenizer_dir=byte_level_tokenizer_dir)


def _read_back(path: Path) -> dict:
    """The file's tensor types and shapes, read with gguf-py's GGUFReader (and by the exporter's header reader)."""
    types = {t.name: (GGMLQuantizationType(t.tensor_type), tuple(int(d) for d in t.shape))
             for t in GGUFReader(path).tensors}
    assert read_types(path) == types
    return types


def _q4_k_m(source_dir: Path, out: Path, keep_tokens: int | None, channels: int) -> Path:
    plan = random_plan(VOCAB, FFN, LAYERS, keep_tokens, channels, seed=3)
    export(open_source(source_dir), plan, out, "gguf", ExportOptions(outtype="q4_k_m", progress=False,
                                                                     report_plots=False))
    return next(out.glob("*.gguf"))


@pytest.fixture(scope="module")
def dense_types(source_dir: Path, module_tmp: ModuleTmp) -> dict:
    return _read_back(_q4_k_m(source_dir, module_tmp.mktemp("dense") / "out", None, FFN))


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(OUR_WARNING)]


def test_hand_written_plan_off_the_grid_warns_once_and_reports_the_fallback(
        source_dir: Path, dense_types: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {dense_types[f"blk.{i}.ffn_down.weight"][0] for i in range(LAYERS)} == {Q.Q4_K, Q.Q6_K}
    path = _q4_k_m(source_dir, tmp_path / "out", 1500, 480)
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1
    assert "blk.*.ffn_down.weight" in warnings[0] and "Q4_K -> Q5_0 x1" in warnings[0] and \
        "Q6_K -> Q8_0 x1" in warnings[0]
    types = _read_back(path)
    for i in range(LAYERS):
        name = f"blk.{i}.ffn_down.weight"
        assert types[name][1] == (480, HIDDEN)
        assert types[name][0] == FALLBACK[dense_types[name][0]]
    others = {n for n, (_, shape) in types.items() if len(shape) == 2 and "ffn_down" not in n}
    assert others and all(types[n][0] == dense_types[n][0] for n in others)

    section = json.loads((tmp_path / "out" / "report.json").read_text())["output_types"]
    kinds = {k["kind"]: k for k in section["kinds"]}
    down = kinds["blk.*.ffn_down.weight"]
    assert down["fell_back"] == LAYERS == section["fallback_tensors"]
    assert down["types"] == {"Q5_0": 1, "Q8_0": 1} and down["dense_types"] == {"Q4_K": 1, "Q6_K": 1}
    as_dense = sum(HIDDEN * 480 * GGML_QUANT_SIZES[dense_types[f"blk.{i}.ffn_down.weight"][0]][1] // K_QUANT_BLOCK
                   for i in range(LAYERS))
    written = sum(HIDDEN * 480 * GGML_QUANT_SIZES[types[f"blk.{i}.ffn_down.weight"][0]][1] // LEGACY_BLOCK
                  for i in range(LAYERS))
    assert (down["bytes"], down["bytes_without_fallback"]) == (written, as_dense)
    assert section["file_bytes"] == path.stat().st_size
    assert section["file_bytes_without_fallback"] == path.stat().st_size - (written - as_dense)
    assert all(k["fell_back"] == 0 for k in section["kinds"] if k is not down)
    assert "## Output types" in (tmp_path / "out" / "report.md").read_text()


def test_plan_on_the_grid_keeps_every_dense_type(source_dir: Path, dense_types: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _q4_k_m(source_dir, tmp_path / "out", 1500, 256)
    assert not _warnings(capsys.readouterr().err)
    types = _read_back(path)
    weights = {n for n, (_, shape) in types.items() if len(shape) == 2}
    assert weights == {n for n, (_, shape) in dense_types.items() if len(shape) == 2}
    assert [n for n in sorted(weights) if types[n][0] != dense_types[n][0]] == []
    assert json.loads((tmp_path / "out" / "report.json").read_text())["output_types"]["fallback_tensors"] == 0


def test_onnx_report_shows_the_int4_padding(source_dir: Path, tmp_path: Path) -> None:
    plan = random_plan(VOCAB, FFN, LAYERS, 1500, 480, seed=3)
    export(open_source(source_dir), plan, tmp_path / "onnx", "onnx",
           ExportOptions(outtype="int4", int4_block_size=128, progress=False, report_plots=False))
    section = json.loads((tmp_path / "onnx" / "report.json").read_text())["output_types"]
    down = next(k for k in section["kinds"] if "down_proj" in k["kind"])
    assert (down["tensors"], down["row_length"], down["padded_row_length"]) == (LAYERS, 480, 512)
    assert down["bytes"] - down["bytes_without_padding"] == LAYERS * HIDDEN * (512 - 480) * 4 // 8
    assert section["padding_bytes"] == down["bytes"] - down["bytes_without_padding"]


def test_row_blocks_are_the_exporters_blocks() -> None:
    quantised = {name for name, t in OUTTYPES.items() if t.needs_llama_cpp or t.weight not in (Q.F32, Q.F16, Q.BF16)}
    assert set(GGUF_ROW_BLOCKS) == quantised
    for name, block in GGUF_ROW_BLOCKS.items():
        meant = MIXTURE_TYPES[name] if OUTTYPES[name].needs_llama_cpp else (OUTTYPES[name].weight,)
        assert {GGML_QUANT_SIZES[t][0] for t in meant} == {block}, name
    assert {GGML_QUANT_SIZES[t][0] for t in FALLBACK} == {K_QUANT_BLOCK}
    assert {GGML_QUANT_SIZES[t][0] for t in FALLBACK.values()} == {LEGACY_BLOCK}
    assert row_block("gguf", "q4_k_m", 32).block == row_block(None, "Q6_K", 32).block == 256
    assert row_block("gguf", "f16", 32).block == row_block("hf", "q4_k_m", 32).block == 1
    assert row_block(None, None, 32).block == 1
    assert row_block("onnx", "int4", 128).block == row_block(None, "int8", 128).block == 128
    assert row_block("onnx", "fp16", 128).block == 1
    assert set(GGUF_ROW_BLOCKS) | set(GGUF_FLOAT) == set(OUTTYPES) | {"auto"}
    assert set(ONNX_BLOCKED) | set(ONNX_FLOAT) == set(ONNX_OUTTYPES)
    for fmt, wrong in (("gguf", "int4"), ("onnx", "q4_k_m"), ("onnx", "auto"), (None, "q3_k_m")):
        with pytest.raises(ConvertError, match="is not a"):
            row_block(fmt, wrong, 32)
    assert Budget(ffn_multiple=48, row_block=256).ffn_grid == 768
    assert Budget(row_block=K_QUANT_BLOCK).ffn_grid == 256 and Budget().ffn_grid == 32
