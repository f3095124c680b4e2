"""The down_proj refit: its least-squares math, plans that carry it, and the file it travels in.

(a) refit_map solves the least-squares problem (numpy's lstsq on the activations gives the same
weights), its ridge pulls toward the plain slice, and keeping every channel gives W back; (b) `plan --refit` writes the
plan and its refit file, the export's down_proj is the refit rounded to the source dtype (bf16
bit for bit as torch rounds it) while every other tensor is the plain cut, stock transformers
loads it, its bits per byte equal auto-split's simulation of the same plan, and `verify
--reference` rebuilds it; the one-shot CLI refits into GGUF and ONNX outputs that verify against
llama.cpp and onnxruntime; (c) on the calibration sample the refit reproduces the dense down_proj
output better than slicing; (d) scores without Gram matrices, --refit with --plan but no
--scores, and a missing, changed or escaping refit file fail in one line with nothing written.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from converter.cli import main
from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan
from converter.score.autosplit import Budget, SplitEvaluator, make_plan
from converter.score.bpb import text_bytes
from converter.score.scorer import score
from converter.score.corpus import open_corpus
from converter.score.refit_solver import refit_map
from converter.score.scores import Scores
from tests.support.score_fixtures import ALL_WINDOWS, hf_bits, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, calib_tokens=4096, heldout_tokens=1024, gram=True)
KEEP = 64


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("corpus") / "calib.txt", 10, 12)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def scored(request: pytest.FixtureRequest, module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
           corpus: Path) -> tuple[Path, Scores, Path]:
    folder = tiny_model_dir(module_tmp.mktemp("model"), byte_level_tokenizer_dir,
                            dtype=getattr(torch, request.param))
    scores = score(open_source(folder), open_corpus([corpus]), OPTIONS)
    return folder, scores, scores.save(folder.parent / "scores.safetensors")


def test_refit_map_is_the_least_squares_solution() -> None:
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24))
    w = rng.standard_normal((8, 24))
    gram = acts.T @ acts
    kept = np.sort(rng.choice(24, 15, replace=False))
    refit = w @ refit_map(gram, kept, ridge=0.0).T
    expected = np.linalg.lstsq(acts[:, kept], acts @ w.T, rcond=None)[0].T
    np.testing.assert_allclose(refit, expected, rtol=1e-6, atol=1e-8)
    for ridge in (0.0, 1e-3, 10.0):
        np.testing.assert_allclose(w @ refit_map(gram, range(24), ridge=ridge).T, w, atol=1e-9)
    ridged = w @ refit_map(gram, kept, ridge=1e-3).T
    assert 0 < np.abs(ridged - refit).max() < 0.05 * np.abs(refit).max()
    # A huge ridge leaves the plain slice.
    np.testing.assert_allclose(w @ refit_map(gram, kept, ridge=1e9).T, w[:, kept], atol=1e-6)


def _reconstruction_error(gram: np.ndarray, w: np.ndarray, kept: np.ndarray, x: np.ndarray) -> float:
    """sum over the sample of ||x a_k - w a||^2, from the Gram matrix alone."""
    cross = x @ gram[np.ix_(kept, np.arange(gram.shape[0]))] @ w.T
    return float(np.trace(x @ gram[np.ix_(kept, kept)] @ x.T) - 2 * np.trace(cross) + np.trace(w @ gram @ w.T))


def test_refit_export_loads_matches_the_simulation_and_verifies(tmp_path: Path, scored: tuple[Path, Scores, Path],
                                                              capsys: pytest.CaptureFixture) -> None:
    folder, scores, scores_path = scored
    plan_path = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "--vocab-size", "1200", "--intermediate-size",
                 str(KEEP), "--refit", "-o", str(plan_path)]) == 0
    assert "plan.refit" in capsys.readouterr().out
    plan = PrunePlan.load(plan_path)
    assert plan.refit is not None and plan.metadata["ffn_refit"]["method"] == "least_squares"
    out = tmp_path / "out"
    assert main([str(folder), str(out), "--plan", str(plan_path), "--no-progress"]) == 0
    assert (out / "prune_plan.refit").is_file() and not any("refit" in f.name for f in out.glob("*.safetensors"))
    source = open_source(folder)
    dtype = source.checkpoint.info("model.layers.0.mlp.down_proj.weight").dtype
    with safe_open(str(out / "model.safetensors"), framework="pt") as got, \
            safe_open(str(folder / "model.safetensors"), framework="pt") as src:
        for layer, kept in enumerate(plan.kept_ffn_channels):
            name = f"model.layers.{layer}.mlp.down_proj.weight"
            expected = torch.from_numpy(plan.refit.weights[layer]).to(got.get_tensor(name).dtype)
            assert torch.equal(got.get_tensor(name).view(torch.int16 if dtype == "BF16" else torch.int32),
                               expected.view(torch.int16 if dtype == "BF16" else torch.int32))
            sliced = src.get_tensor(name)[:, list(kept)]
            assert not torch.equal(got.get_tensor(name), sliced)
            up = f"model.layers.{layer}.mlp.up_proj.weight"
            assert torch.equal(got.get_tensor(up), src.get_tensor(up)[list(kept)])
            gram = scores.gram[layer].astype(np.float64)
            w = src.get_tensor(name).double().numpy()
            k = np.asarray(kept)
            assert _reconstruction_error(gram, w, k, plan.refit.weights[layer].astype(np.float64)) < \
                0.9 * _reconstruction_error(gram, w, k, w[:, k])
    texts = scores.heldout_texts
    exported = hf_bits(out, texts, 128) / text_bytes(texts)
    evaluator = SplitEvaluator(source, scores, Budget(device="cpu", eval_seq_len=128, refit=True))
    assert evaluator.bits_per_byte(plan) == pytest.approx(exported, rel=1e-4 if dtype == "F32" else 2e-2)
    plain = SplitEvaluator(source, scores, Budget(device="cpu", eval_seq_len=128)).bits_per_byte(plan)
    assert abs(plain - evaluator.bits_per_byte(plan)) > 1e-4
    capsys.readouterr()
    assert main(["verify", str(out), "--reference", str(folder)]) == 0, capsys.readouterr().out


def test_auto_split_with_refit_chooses_on_refitted_candidates(tmp_path: Path,
                                                               scored: tuple[Path, Scores, Path]) -> None:
    folder, scores, _ = scored
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(target_ratio=0.3, splits=3, refine_rounds=0, device="cpu",
                                            eval_seq_len=128, refit=True))
    assert plan.refit is not None and len(plan.refit.weights) == source.spec.dims.layers
    assert plan.metadata["heldout_bits_per_byte"] == min(e["bits_per_byte"] for e in plan.metadata["auto_split"])
    export(source, plan, tmp_path / "out", "hf")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["intermediate_size"] == plan.intermediate_size


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_one_shot_refit_to_gguf_and_onnx_verifies(tmp_path: Path, scored: tuple[Path, Scores, Path], corpus: Path,
                                                  fmt: str, capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = scored
    out = tmp_path / "out"
    assert main([str(folder), str(out), "--format", fmt, "--outtype", "f32" if fmt == "gguf" else "fp32",
                 "--calib", str(corpus), "--intermediate-size", str(KEEP), "--refit", "--device", "cpu",
                 "--calib-tokens", "2048", "--no-progress"]) == 0
    plan = PrunePlan.load(out / "prune_plan.json")
    assert plan.refit is not None and plan.intermediate_size == KEEP
    capsys.readouterr()
    assert main(["verify", str(out), "--reference", str(folder)]) == 0, capsys.readouterr().out


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in needles), err


def test_refit_bad_input(tmp_path: Path, scored: tuple[Path, Scores, Path], corpus: Path,
                         capsys: pytest.CaptureFixture) -> None:
    folder, scores, scores_path = scored
    bare = replace(scores, gram=None).save(tmp_path / "bare.st")
    plan_path = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(bare), "--intermediate-size", str(KEEP), "--refit",
                 "-o", str(plan_path)]) == 2
    _one_line_error(capsys, "bare.st: holds no activation Gram matrices", "score --refit")
    assert not plan_path.exists()
    assert main(["plan", str(folder), "--scores", str(scores_path), "--intermediate-size", str(KEEP), "-o",
                 str(plan_path)]) == 0
    capsys.readouterr()
    assert main([str(folder), str(tmp_path / "o1"), "--plan", str(plan_path), "--refit"]) == 2
    _one_line_error(capsys, "--refit with --plan needs --scores")
    assert main([str(folder), str(tmp_path / "o1"), "--plan", str(plan_path), "--refit", "--scores",
                 str(scores_path), "--no-progress"]) == 0
    assert PrunePlan.load(tmp_path / "o1" / "prune_plan.json").refit is not None
    assert main(["plan", str(folder), "--scores", str(scores_path), "--intermediate-size", str(KEEP), "--refit",
                 "-o", str(plan_path), "--force"]) == 0
    side = tmp_path / "plan.refit"
    data = side.read_bytes()
    capsys.readouterr()
    cases = [
        ("changed", lambda: side.write_bytes(data[:-4] + b"\0\0\0\0"), "plan.refit: does not match"),
        ("missing", side.unlink, "plan.refit: is missing"),
    ]
    for label, damage, needle in cases:
        side.write_bytes(data)
        damage()
        out = tmp_path / f"out-{label}"
        assert main([str(folder), str(out), "--plan", str(plan_path)]) == 2
        _one_line_error(capsys, needle)
        assert not out.exists()
    side.write_bytes(data)
    raw = json.loads(plan_path.read_text())
    raw["ffn_refit"]["file"] = "../plan.refit"
    plan_path.write_text(json.dumps(raw))
    assert main([str(folder), str(tmp_path / "out-escape"), "--plan", str(plan_path)]) == 2
    _one_line_error(capsys, "must be a file name in the plan's own folder")
    assert not (tmp_path / "out-escape").exists()


def test_gram_statistics_too_large_are_refused_before_any_work() -> None:
    from converter.errors import ConvertError
    from converter.score.scorer import check_gram_size

    check_gram_size(30, 1536)
    with pytest.raises(ConvertError, match=r"--refit needs 250\.0 GiB .*prune without --refit"):
        check_gram_size(80, 20480)
