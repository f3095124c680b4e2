"""Plans from scores: sizes, predicted parameter counts, simulated quality, and every bad budget.

The plan's predicted parameter count equals what the exported model actually holds (exact
sizes and target ratios, tied and untied embeddings); the vocabulary fits its target after the
tokenizer rules; the in-memory simulation auto-split uses gives the exported model's bits per
byte; COMPACT equals act² when every token survives and differs under a cut; the one-shot CLI
scores, plans and exports; bad budgets, foreign scores and bad corpora fail in one line with
nothing written.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from converter.pipeline import export
from converter.source import open_source
from converter.score.autosplit import Budget, SplitEvaluator, make_plan
from converter.score.bpb import text_bytes
from converter.score.budget import ParamModel, budget_for, candidate_splits, param_model
from converter.score.scorer import score
from converter.score.corpus import open_corpus
from converter.score.planner import VocabFitter, channel_scores
from converter.score.scores import Scores
from tests.support.score_fixtures import ALL_WINDOWS, folder_params, hf_bits, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, calib_tokens=4096, heldout_tokens=1024)


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("corpus") / "calib.txt", 10, 12)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def scored(request: pytest.FixtureRequest, module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
           corpus: Path) -> tuple[Path, Scores, Path]:
    folder = tiny_model_dir(module_tmp.mktemp("model"), byte_level_tokenizer_dir, tied=request.param)
    scores = score(open_source(folder), open_corpus([corpus]), OPTIONS)
    path = scores.save(folder.parent / "scores.safetensors")
    return folder, scores, path


@pytest.mark.parametrize("budget", [Budget(vocab_size=900, intermediate_size=100),
                                    Budget(vocab_size=1500), Budget(intermediate_size=64, method="act2"),
                                    Budget(target_ratio=0.3, splits=5, eval_seq_len=128)],
                         ids=["exact", "vocab-only", "ffn-only", "ratio"])
def test_predicted_params_equal_exported(tmp_path: Path, scored: tuple[Path, Scores, Path], budget: Budget) -> None:
    folder, scores, _ = scored
    source = open_source(folder)
    plan = make_plan(source, scores, replace(budget, device="cpu"))
    out = tmp_path / "out"
    export(source, plan, out, "hf")
    written = json.loads((out / "prune_plan.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert folder_params(out) == plan.metadata["params_after_predicted"]
    assert config["vocab_size"] == plan.vocab_size == written["vocab_size"]
    assert config["intermediate_size"] == plan.intermediate_size
    if budget.vocab_size is not None:
        assert plan.vocab_size <= budget.vocab_size
        assert plan.metadata["vocab_requested"] < plan.vocab_size
        assert sum(plan.metadata["vocab_added_by_rules"].values()) == plan.vocab_size - plan.metadata["vocab_requested"]
    if budget.target_ratio is not None:
        assert plan.metadata["params_after_predicted"] <= (1 - budget.target_ratio) * plan.metadata["params_before"]
        table = plan.metadata["auto_split"]
        assert len(table) >= 2 and plan.intermediate_size % 32 == 0
        # --general-weight > 0 (the default) chooses by the blended objective; 0 by bits per byte alone
        chosen = min(table, key=lambda e: e.get("objective", e["bits_per_byte"]))
        assert plan.metadata["heldout_bits_per_byte"] == chosen["bits_per_byte"]
        model = param_model(source)
        limit = budget_for(model, budget.target_ratio)
        assert any(e["vocab"] == model.vocab for e in table) == (model.ffn_for(model.vocab, limit, 32) >= 32)
        vocab_only = model.vocab - math.ceil((model.total - limit) / model.per_token)
        assert any(e["ffn"] == model.ffn for e in table) == (vocab_only >= VocabFitter(source, scores).minimum())


def test_simulated_split_equals_exported_model(tmp_path: Path, scored: tuple[Path, Scores, Path]) -> None:
    folder, scores, _ = scored
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(vocab_size=1200, intermediate_size=96, device="cpu"))
    evaluator = SplitEvaluator(source, scores, Budget(device="cpu", eval_seq_len=128))
    simulated = evaluator.bits_per_byte(plan)
    export(source, plan, tmp_path / "out", "hf")
    texts = scores.heldout_texts
    exported = hf_bits(tmp_path / "out", texts, 128) / text_bytes(texts)
    dense = hf_bits(folder, texts, 128) / text_bytes(texts)
    assert simulated == pytest.approx(exported, rel=1e-5)
    assert abs(simulated - dense) > 1e-3


def test_compact_equals_act2_only_when_every_token_is_kept(scored: tuple[Path, Scores, Path]) -> None:
    _, scores, _ = scored
    all_kept = channel_scores(scores, "compact", None)
    np.testing.assert_allclose(all_kept, scores.act2, rtol=1e-12)
    kept = np.argsort(-scores.counts, kind="stable")[:200]
    cut = channel_scores(scores, "compact", kept)
    assert np.all(cut <= scores.act2 * (1 + 1e-12)) and not np.allclose(cut, scores.act2)
    focused = channel_scores(scores, "compact", None, focus=0.5)
    assert not np.allclose(focused / focused.sum(), all_kept / all_kept.sum())


def test_one_shot_cli_scores_plans_and_exports(tmp_path: Path, scored: tuple[Path, Scores, Path], corpus: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = scored
    out = tmp_path / "out"
    assert main([str(folder), str(out), "--calib", str(corpus), "--vocab-size", "1000", "--intermediate-size", "128",
                 "--device", "cpu", "--calib-tokens", "2048", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "covers" in err and "params = fixed" in err and "WARNING" not in err
    plan = json.loads((out / "prune_plan.json").read_text())
    assert plan["vocab_size"] <= 1000 and plan["intermediate_size"] == 128
    assert plan["metadata"]["method"] == "compact"
    out2 = tmp_path / "out2"
    assert main([str(folder), str(out2), "--intermediate-size", "96", "--device", "cpu", "--calib-tokens", "1024",
                 "--no-progress", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "pydoc_data.topics" in err and "--calib" in err
    assert not out2.exists()


def test_plan_cli_draws_ffn_sizes_on_the_outtype_block(tmp_path: Path, scored: tuple[Path, Scores, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`plan --outtype int4 --int4-block-size 64`: every auto-split candidate's FFN on lcm(32, 64); on q4_k_m's
    grid of 256 an FFN of 160 can only be kept whole (the dense export's types), so the vocabulary takes the cut."""
    folder, _, scores_path = scored
    out = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "--target-ratio", "0.3", "--splits", "4",
                 "--device", "cpu", "--outtype", "int4", "--int4-block-size", "64", "-o", str(out)]) == 0
    meta = json.loads(out.read_text())["metadata"]
    ffns = [c["ffn"] for c in meta["auto_split"]]
    assert any(f < 160 for f in ffns) and all(f % 64 == 0 or f == 160 for f in ffns)  # 160: the whole FFN, kept
    assert meta["budget"]["ffn_multiple"] == 64
    assert meta["budget"]["row_block"] == 64 and json.loads(out.read_text())["intermediate_size"] in ffns
    assert main(["plan", str(folder), "--scores", str(scores_path), "--target-ratio", "0.3", "--splits", "4",
                 "--device", "cpu", "--outtype", "q4_k_m", "-o", str(out), "--force"]) == 0
    kept = json.loads(out.read_text())
    assert kept["intermediate_size"] == 160 and {c["ffn"] for c in kept["metadata"]["auto_split"]} == {160}
    assert kept["metadata"]["budget"]["ffn_multiple"] == 256


def test_plan_cli_writes_the_plan(tmp_path: Path, scored: tuple[Path, Scores, Path]) -> None:
    folder, _, scores_path = scored
    out = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "--vocab-size", "1100", "--intermediate-size",
                 "64", "--method", "magnitude", "-o", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["metadata"]["method"] == "magnitude" and plan["intermediate_size"] == 64
    assert main([str(folder), str(tmp_path / "exported"), "--plan", str(out)]) == 0


BAD_BUDGETS = [
    (["--target-ratio", "0"], "--target-ratio must be between 0 and 1"),
    (["--target-ratio", "1"], "--target-ratio must be between 0 and 1"),
    (["--target-ratio", "-0.2"], "--target-ratio must be between 0 and 1"),
    (["--target-ratio", "0.999"], "cannot be met"),
    (["--vocab-size", "5000"], "--vocab-size 5000 must be between 1 and the model's 2000"),
    (["--intermediate-size", "161"], "--intermediate-size 161 must be between 1 and the model's 160"),
    (["--vocab-size", "20"], "below the"),
    (["--target-ratio", "0.3", "--vocab-size", "900"], "not both"),
    ([], "no budget"),
    (["--vocab-size", "900", "--ffn-multiple", "0"], "--ffn-multiple must be at least 1"),
]


@pytest.mark.parametrize("flags,message", BAD_BUDGETS, ids=[" ".join(f) or "none" for f, _ in BAD_BUDGETS])
def test_bad_budgets_fail_in_one_line_and_write_nothing(tmp_path: Path, scored: tuple[Path, Scores, Path],
                                                        capsys: pytest.CaptureFixture, flags: list[str],
                                                        message: str) -> None:
    folder, _, scores_path = scored
    out = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "-o", str(out), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    assert main([str(folder), str(tmp_path / "out"), "--device", "cpu", "--calib", "/nonexistent", *flags]) == 2
    assert not (tmp_path / "out").exists()


def test_scores_of_another_model_are_refused(tmp_path: Path, scored: tuple[Path, Scores, Path],
                                             byte_level_tokenizer_dir: Path, capsys: pytest.CaptureFixture) -> None:
    _, _, scores_path = scored
    other = tiny_model_dir(tmp_path / "other", byte_level_tokenizer_dir, seed=3)
    out = tmp_path / "plan.json"
    assert main(["plan", str(other), "--scores", str(scores_path), "--vocab-size", "900", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{scores_path}: scores were made for another model" in err and not out.exists()
    assert main([str(other), str(tmp_path / "out"), "--scores", str(scores_path), "--vocab-size", "900"]) == 2
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["plan", str(other), "--scores", str(tmp_path / "junk.safetensors"), "--vocab-size", "900",
                 "-o", str(out)]) == 2
    assert "junk.safetensors: cannot be read as a scores file" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [(b"", "contains no text"), (b"caf\xe9\n", "line 1 is not UTF-8"),
                                             (b'{"txt": "x"}\n', "has no 'text' field")])
def test_bad_corpus_fails_before_writing(tmp_path: Path, scored: tuple[Path, Scores, Path], content: bytes,
                                         message: str, capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = scored
    calib = tmp_path / ("calib.jsonl" if content.startswith(b"{") else "calib.txt")
    calib.write_bytes(content)
    out = tmp_path / "scores.safetensors"
    assert main(["score", str(folder), "--calib", str(calib), "--device", "cpu", "--no-progress", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(calib) in err and err.count("\n") == 1
    assert not out.exists()
    assert main([str(folder), str(tmp_path / "model"), "--calib", str(calib), "--vocab-size", "900"]) == 2
    assert not (tmp_path / "model").exists()


def test_counts_only_scores_cannot_rank_channels(tmp_path: Path, scored: tuple[Path, Scores, Path], corpus: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    folder, _, _ = scored
    counts = tmp_path / "counts.safetensors"
    assert main(["score", str(folder), "--calib", str(corpus), "--counts-only", "--no-progress", "-o",
                 str(counts)]) == 0
    loaded = Scores.load(counts)
    assert loaded.tokens_scored == 0 and loaded.tokens_counted > 0 and not loaded.importance.any()
    out = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(counts), "--intermediate-size", "64", "-o", str(out)]) == 2
    assert "--counts-only" in capsys.readouterr().err and not out.exists()
    assert main(["plan", str(folder), "--scores", str(counts), "--vocab-size", "1000", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["vocab_size"] <= 1000


SMOLLM2_LIKE = ParamModel(fixed=28_000_000, per_token=576, per_channel=51_840, vocab=49_152, ffn=1536)
GEMMA_LIKE = ParamModel(fixed=20_000_000, per_token=640, per_channel=65_536, vocab=262_144, ffn=2048)


@pytest.mark.parametrize("model", [SMOLLM2_LIKE, GEMMA_LIKE], ids=["smollm2-like", "gemma-like"])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.35, 0.5, 0.6])
@pytest.mark.parametrize("count", [2, 5, 6, 9])
def test_candidate_splits_hold_both_single_knob_extremes(model: ParamModel, ratio: float, count: int) -> None:
    """Auto-split takes the best measured candidate, so it can only match or beat the extremes it measures."""
    min_vocab = 300
    budget = budget_for(model, ratio)
    splits = candidate_splits(model, ratio, min_vocab, 32, count)
    vocabs = [s.vocab for s in splits]
    assert len(set(vocabs)) == len(vocabs) and vocabs == sorted(vocabs, reverse=True)
    ffn_only_fits = model.ffn_for(model.vocab, budget, 32) >= 32
    assert (vocabs[0] == model.vocab) == ffn_only_fits
    if not ffn_only_fits:
        assert model.ffn_for(vocabs[0] + 1, budget, 32) < 32 <= model.ffn_for(vocabs[0], budget, 32)
    vocab_only = model.vocab - math.ceil((model.total - budget) / model.per_token)
    if vocab_only >= min_vocab:
        assert vocabs[-1] == vocab_only and model.ffn_for(vocab_only, budget, 32) == model.ffn
    else:
        assert vocabs[-1] == min_vocab
    for s in splits:
        assert model.params(s.vocab, model.ffn_for(s.vocab, budget, 32)) <= budget
