"""The ONNX int4 quantizer weighs columns by the scores' matmul input sums, cut through the plan.

A tiny untied Llama, a random plan, and input sums that put most of the weight on a few columns
of every matmul: the int4 export given those sums against the same export without them. The
pruned down_proj (its kept FFN channels' sums) and the LM head come out with less weighted error
in every block, the untied embedding table (no matmul of its own) byte for byte the same, and
sums of another model's shape are refused with the file named and nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from converter.errors import ConvertError
from converter.pipeline import export
from converter.score.matmul_inputs import OUTPUT_NAME, MatmulSums
from converter.source import open_source
from exporters.onnx.fused import names
from exporters.onnx.fused.quantize import BlockQuantized, dequantize_blocks
from exporters.options import ExportOptions
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def _skewed_sums(model: torch.nn.Module, seed: int, drop: int = 0) -> MatmulSums:
    """Input sums per matmul of the dense model: a few columns 100 times the rest."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    sums = {}
    for layer in range(cfg.num_hidden_layers):
        for proj in PROJECTIONS:
            width = cfg.intermediate_size if proj == "mlp.down_proj" else cfg.hidden_size
            if proj == "mlp.down_proj":
                width -= drop
            sums[f"model.layers.{layer}.{proj}.weight"] = np.where(rng.random(width) < 0.1, 100.0, 1.0)
    sums[OUTPUT_NAME] = np.where(rng.random(cfg.hidden_size) < 0.1, 100.0, 1.0)
    return MatmulSums(sums, tokens=1000, chunk_size=100)


@pytest.fixture(scope="module")
def setup(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> dict:
    root = module_tmp.mktemp("column-weights")
    model = build_tiny_model("llama", seed=11, tied=False)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=11)
    sums = _skewed_sums(model, seed=12)
    folders = {}
    for name, importance in (("plain", None), ("weighted", sums)):
        folders[name] = root / name
        export(open_source(src), plan, folders[name], "onnx",
               ExportOptions(outtype="int4", importance=importance, progress=False, report_plots=False))
    return {"model": model, "src": src, "plan": plan, "sums": sums, "folders": folders}


def _quantized(folder: Path, base: str) -> BlockQuantized:
    inits = {t.name: t for t in onnx.load(folder / "model.onnx").graph.initializer}
    packed = numpy_helper.to_array(inits[names.weight(base, 4)])
    scales = numpy_helper.to_array(inits[names.scales(base)])
    return BlockQuantized(packed.reshape(packed.shape[0], scales.shape[1], -1), scales)


def _block_errors(setup: dict, base: str, want: np.ndarray, columns: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, folder in setup["folders"].items():
        got = dequantize_blocks(_quantized(folder, base), 4, want.shape[1])
        squared = ((got - want) ** 2) * columns
        out[name] = squared.reshape(want.shape[0], -1, 32).sum(-1)
    return out


def test_pruned_down_proj_weighs_its_kept_channels(setup: dict) -> None:
    kept = np.asarray(setup["plan"].kept_ffn_channels[0])
    dense = setup["model"].model.layers[0].mlp.down_proj.weight.detach().numpy()
    columns = setup["sums"].sums["model.layers.0.mlp.down_proj.weight"][kept]
    errors = _block_errors(setup, names.in_layer(0, names.DOWN), dense[:, kept], columns)
    assert (errors["weighted"] <= errors["plain"] * (1 + 1e-5) + 1e-12).all()
    assert errors["weighted"].sum() < 0.97 * errors["plain"].sum()


def test_lm_head_weighed_and_untied_embedding_unchanged(setup: dict) -> None:
    written = json.loads((setup["folders"]["weighted"] / "prune_plan.json").read_text())
    kept = np.asarray(written["kept_token_ids"])  # the plan's ids and the tokenizer's closure
    head = setup["model"].lm_head.weight.detach().numpy()[kept]
    errors = _block_errors(setup, names.LM_HEAD, head, setup["sums"].sums[OUTPUT_NAME])
    assert (errors["weighted"] <= errors["plain"] * (1 + 1e-5) + 1e-12).all()
    assert errors["weighted"].sum() < 0.97 * errors["plain"].sum()
    tables = [_quantized(folder, names.EMBED) for folder in setup["folders"].values()]
    np.testing.assert_array_equal(tables[0].packed, tables[1].packed)
    np.testing.assert_array_equal(tables[0].scales, tables[1].scales)


def test_sums_of_another_shape_are_refused(setup: dict, tmp_path: Path) -> None:
    wrong = _skewed_sums(setup["model"], seed=13, drop=8)
    with pytest.raises(ConvertError, match=r"down_proj.*columns.*another model") as caught:
        export(open_source(setup["src"]), setup["plan"], tmp_path / "out", "onnx",
               ExportOptions(outtype="int4", importance=wrong, progress=False, report_plots=False))
    assert str(setup["src"]) in str(caught.value)
    assert not (tmp_path / "out").exists()
