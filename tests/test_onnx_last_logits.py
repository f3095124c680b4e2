"""--onnx-logits last: the fused graph hands only the last position to the LM head.

A prompt then runs the LM head once instead of once a token (onnxruntime-genai's builder calls it
prune_lm_head); generation only ever reads the last position. Checked against the same export
with every position's logits: equal logits for the last position of a prefill and of each cached
step, each right-padded row's last real token, the same greedy tokens in onnxruntime-genai, and verify's runtime still
reading a logit for every position (stepping a token at a time). The traced graph refuses it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from converter.errors import ConvertError
from converter.pipeline import export
from converter.source import open_source
from converter.verify.runtime_onnx import OnnxModel
from exporters.options import ExportOptions
from tests.support.onnx_runner import OnnxDecoder, genai_greedy, positions_from_mask
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

FAMILIES = [("llama", {}), ("gemma3_text", {"layer_types": ["sliding_attention", "full_attention"]}),
            ("gemma2", {})]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for f, _ in FAMILIES])
def folders(request: pytest.FixtureRequest, module_tmp: ModuleTmp,
            byte_level_tokenizer_dir: Path) -> dict[str, Path]:
    family, overrides = request.param
    root = module_tmp.mktemp(f"last-logits-{family}")
    model = build_tiny_model(family, seed=4, **overrides)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=4)
    out = {}
    for logits in ("all", "last"):
        out[logits] = root / logits
        export(open_source(src), plan, out[logits], "onnx",
               ExportOptions(outtype="fp32", onnx_logits=logits, progress=False, report_plots=False))
    return out


def test_graph_returns_one_position(folders: dict[str, Path]) -> None:
    graph = onnx.load(folders["last"] / "model.onnx", load_external_data=False).graph
    dims = graph.output[0].type.tensor_type.shape.dim
    assert graph.output[0].name == "logits" and dims[1].dim_value == 1
    picks = [n for n in graph.node if n.op_type == "GatherElements"]
    assert [n.name for n in picks] == ["last_position/GatherElements"]
    full = onnx.load(folders["all"] / "model.onnx", load_external_data=False).graph
    assert full.output[0].type.tensor_type.shape.dim[1].dim_param == "sequence_length"


def test_last_position_logits_equal_the_full_graphs(folders: dict[str, Path]) -> None:
    """A prefill of 12 and 6 cached steps: the last position's logits of both graphs."""
    ids = np.random.default_rng(5).integers(3, 500, size=(2, 18))
    mask = np.ones_like(ids)
    positions = positions_from_mask(mask)
    decoders = {name: OnnxDecoder(folder) for name, folder in folders.items()}
    pasts = {name: d.empty_past(2) for name, d in decoders.items()}
    for start, stop in [(0, 12), *((t, t + 1) for t in range(12, 18))]:
        got = {}
        for name, decoder in decoders.items():
            got[name], pasts[name] = decoder.step(ids[:, start:stop], mask[:, :stop], positions[:, start:stop],
                                                  pasts[name])
        assert got["last"].shape == (2, 1, got["all"].shape[-1])
        np.testing.assert_allclose(got["last"], got["all"][:, -1:], rtol=1e-5, atol=1e-5)


def test_right_padded_rows_get_their_last_real_token(folders: dict[str, Path]) -> None:
    """The fused graphs read a batch as right-padded: a row of 7 real tokens in a prefill of 12 gets
    position 6's logits, not a pad's."""
    ids = np.random.default_rng(8).integers(3, 500, size=(2, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    got = {}
    for name, folder in folders.items():
        decoder = OnnxDecoder(folder)
        got[name], _ = decoder.step(ids, mask, positions_from_mask(mask), decoder.empty_past(2))
    np.testing.assert_allclose(got["last"][0, 0], got["all"][0, 11], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["last"][1, 0], got["all"][1, 6], rtol=1e-5, atol=1e-5)
    assert np.abs(got["all"][1, 6] - got["all"][1, 11]).max() > 1e-3  # the pad's logits would differ


def test_genai_generates_the_same_tokens(folders: dict[str, Path]) -> None:
    prompt = [int(i) for i in np.random.default_rng(6).integers(3, 500, size=9)]
    assert genai_greedy(folders["last"], prompt, 24) == genai_greedy(folders["all"], prompt, 24)


def test_verify_runtime_reads_every_position(folders: dict[str, Path]) -> None:
    ids = [int(i) for i in np.random.default_rng(7).integers(3, 500, size=14)]
    last, full = OnnxModel(folders["last"] / "model.onnx", 1), OnnxModel(folders["all"] / "model.onnx", 1)
    assert last.last_only and not full.last_only
    got, want = last.logits(ids), full.logits(ids)
    assert got.shape == want.shape == (14, want.shape[-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_traced_graph_refuses(tmp_path: Path) -> None:
    """Mistral with a window takes the traced graph, which returns every position: refused before any work."""
    src = open_source(save_tiny_model(build_tiny_model("mistral", seed=2, vocab_size=300), tmp_path / "in"))
    plan = random_plan(300, 160, 2, None, 96, seed=2)
    with pytest.raises(ConvertError, match=r"--onnx-logits last .*traced"):
        export(src, plan, tmp_path / "out", "onnx", ExportOptions(onnx_logits="last", progress=False))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConvertError, match="--onnx-logits"):
        ExportOptions(onnx_logits="first")


def test_flag_fills_the_option() -> None:
    from converter.commands import convert
    from converter.commands.flags import options_from

    parser = convert.build_parser()
    assert options_from(parser.parse_args(["in", "out", "--onnx-logits", "last"]), ExportOptions).onnx_logits == "last"
    assert options_from(parser.parse_args(["in", "out"]), ExportOptions).onnx_logits == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["in", "out", "--onnx-logits", "first"])
