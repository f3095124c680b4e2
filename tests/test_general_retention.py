"""General retention in scoring and planning: probe answers in the scores, --general-weight, retention metadata.

Tiny random models with a trained byte-level tokenizer and its chat template answer a few probe
prompts with a few tokens each, so every test runs in seconds: the scores keep the answers and
their counts (and still load without them), a merge keeps one copy, --general-weight 0 plans
exactly as before while a larger weight keeps more of the answers' tokens, and plans carry
retention for themselves and every auto-split candidate, or say why it was not measured.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from converter.errors import ConvertError
from converter.plan import PrunePlan
from converter.score.autosplit import Budget, make_plan
from converter.score.corpus import open_corpus
from converter.score.probe_record import TENSORS as PROBE_TENSORS
from converter.score.scorer import score
from converter.score.scores import Scores, merge
from converter.source import open_source
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.tiny_tokenizers import train_byte_level_bpe
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, calib_tokens=4096, heldout_tokens=1024, probe_prompts=8, probe_heldout=4,
                  probe_new_tokens=8)
RETENTION_KEYS = {"measured", "split", "prompts", "answer_bytes", "dropped_share", "answer_bpb", "dense_answer_bpb",
                  "ratio"}


@pytest.fixture(scope="module")
def model(module_tmp: ModuleTmp) -> Path:
    tokenizer_dir = train_byte_level_bpe(module_tmp.mktemp("tok"))
    return tiny_model_dir(module_tmp.mktemp("model"), tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("corpus") / "calib.txt", 10, 12)


@pytest.fixture(scope="module")
def scores(model: Path, corpus: Path) -> Scores:
    return score(open_source(model), open_corpus([corpus]), OPTIONS)


def test_scores_carry_probe_answers_and_general_counts(tmp_path: Path, scores: Scores) -> None:
    probe = scores.probe
    assert probe is not None and scores.probe_note == ""
    assert probe.prompts("calib") == 6 and probe.prompts("select") == 2 and probe.prompts("heldout") == 4
    assert all(0 < len(a) <= 8 for a in probe.answers)
    assert int(probe.general_counts.sum()) == probe.answer_tokens("calib")
    assert probe.general_predicted is not None and probe.general_predicted.sum() > 0
    loaded = Scores.load(scores.save(tmp_path / "s.safetensors"))
    assert loaded.probe is not None and loaded.probe.same_answers(probe)
    assert np.array_equal(loaded.probe.general_counts, probe.general_counts)
    assert loaded.probe.max_new_tokens == 8


def test_scores_without_probe_answers_still_load(tmp_path: Path, scores: Scores) -> None:
    path = scores.save(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = {k: v for k, v in (f.metadata() or {}).items() if not k.startswith("probe_")}
    tensors = {k: v for k, v in load_file(str(path)).items() if k not in (*PROBE_TENSORS, "general_predicted")}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=metadata)
    loaded = Scores.load(old)
    assert loaded.probe is None and loaded.probe_note == ""
    assert np.array_equal(loaded.counts, scores.counts)


def test_merge_keeps_one_copy_of_the_answers(tmp_path: Path, model: Path, corpus: Path, scores: Scores) -> None:
    other_corpus = write_corpus(tmp_path / "other.txt", 30, 6)
    other = score(open_source(model), open_corpus([other_corpus]), OPTIONS, scores.layout)
    a, b = scores.save(tmp_path / "a.safetensors"), other.save(tmp_path / "b.safetensors")
    merged = merge([a, b])
    assert merged.probe is not None and scores.probe is not None and merged.probe.same_answers(scores.probe)
    assert np.array_equal(merged.probe.general_counts, scores.probe.general_counts)
    assert np.array_equal(merged.counts, scores.counts + other.counts)
    fewer = score(open_source(model), open_corpus([other_corpus]), replace(OPTIONS, probe_prompts=4), scores.layout)
    with pytest.raises(ConvertError, match="other general-probe answers"):
        merge([a, fewer.save(tmp_path / "c.safetensors")])


def test_weight_zero_plans_as_before(model: Path, scores: Scores) -> None:
    source = open_source(model)
    for budget in (Budget(vocab_size=900, intermediate_size=96, general_weight=0.0, device="cpu"),
                   Budget(target_ratio=0.3, splits=4, eval_seq_len=128, general_weight=0.0, device="cpu")):
        now = make_plan(source, scores, budget)
        before = make_plan(source, replace(scores, probe=None), budget)
        assert now.kept_token_ids == before.kept_token_ids
        assert now.kept_ffn_channels == before.kept_ffn_channels
        def strip(plan: PrunePlan) -> list[dict[str, object]]:
            return [{k: v for k, v in e.items() if k not in ("retention", "select_dropped_share")}
                    for e in plan.metadata.get("auto_split", [])]

        assert strip(now) == strip(before)


def test_larger_weight_keeps_more_of_the_answers(model: Path, scores: Scores) -> None:
    source = open_source(model)
    assert scores.probe is not None
    general = scores.probe.general_counts

    def kept_share(weight: float) -> float:
        plan = make_plan(source, scores, Budget(vocab_size=700, general_weight=weight, device="cpu"))
        return float(general[list(plan.kept_token_ids)].sum() / general.sum())

    assert kept_share(0.9) > kept_share(0.0)
    assert kept_share(0.9) == 1.0


def test_plan_metadata_has_retention_for_the_plan_and_every_candidate(model: Path, scores: Scores) -> None:
    plan = make_plan(open_source(model), scores, Budget(target_ratio=0.3, splits=4, eval_seq_len=128, device="cpu"))
    retention = plan.metadata["retention"]
    assert set(retention) == RETENTION_KEYS and retention["measured"] is True
    assert retention["split"] == "heldout" and retention["prompts"] == 4 and retention["answer_bytes"] > 0
    assert 0 <= retention["dropped_share"] <= 1
    assert retention["ratio"] == pytest.approx(retention["answer_bpb"] / retention["dense_answer_bpb"], rel=1e-3)
    table = plan.metadata["auto_split"]
    assert len(table) >= 2
    for entry in table:
        assert set(entry["retention"]) == RETENTION_KEYS
    chosen = [e for e in table if e["vocab"] == plan.vocab_size]
    assert chosen and chosen[0]["retention"] == retention
    full_ffn = [e for e in table if e["ffn"] == scores.ffn]
    if full_ffn:
        assert full_ffn[0]["retention"]["ratio"] >= 1.0 - 1e-6 or full_ffn[0]["retention"]["dropped_share"] > 0
    exact = make_plan(open_source(model), scores, Budget(vocab_size=2000, intermediate_size=scores.ffn, device="cpu"))
    assert exact.metadata["retention"]["dropped_share"] == 0
    assert exact.metadata["retention"]["ratio"] == pytest.approx(1.0, abs=1e-4)


def test_layer_by_layer_scoring_says_retention_was_not_measured(model: Path, corpus: Path) -> None:
    found = score(open_source(model), open_corpus([corpus]), replace(OPTIONS, layerwise=True))
    assert found.probe is None and "layer by layer" in found.probe_note
    plan = make_plan(open_source(model), found, Budget(vocab_size=900, device="cpu"))
    retention = plan.metadata["retention"]
    assert retention["measured"] is False and "layer by layer" in retention["reason"]
    counts_only = score(open_source(model), open_corpus([corpus]), replace(OPTIONS, counts_only=True))
    assert counts_only.probe is None and "--counts-only" in counts_only.probe_note


def test_dropped_cap_keeps_the_selection_answers_whole(model: Path, scores: Scores) -> None:
    """Candidates that drop more of the select answers' bytes than --max-dropped-share lose to every one within it."""
    budget = Budget(target_ratio=0.3, splits=4, eval_seq_len=128, device="cpu", general_weight=0.0)
    free = make_plan(open_source(model), scores, budget)
    assert free.metadata["max_dropped_share"] is None
    assert not any(e.get("over_cap") for e in free.metadata["auto_split"])
    shares = sorted({e["select_dropped_share"] for e in free.metadata["auto_split"]})
    assert len(shares) >= 2
    cap = shares[0]
    plan = make_plan(open_source(model), scores, replace(budget, max_dropped_share=cap))
    table = plan.metadata["auto_split"]
    assert plan.metadata["max_dropped_share"] == cap
    within = [e for e in table if not e.get("over_cap")]
    assert within and all(e["select_dropped_share"] <= cap for e in within)
    assert all(e["select_dropped_share"] > cap for e in table if e.get("over_cap"))
    chosen = next(e for e in table if e["vocab"] == plan.vocab_size)
    assert chosen in within and chosen["bits_per_byte"] == min(e["bits_per_byte"] for e in within)


def test_general_calibration_caps_dropped_bytes_by_default(scores: Scores) -> None:
    assert not scores.general_calibration and Budget().dropped_cap(scores) is None
    general = replace(scores, corpus=("builtin:general-probe answers (6 prompts) + builtin:pydoc_data.topics",))
    assert general.general_calibration and Budget().dropped_cap(general) == 0.02
    assert Budget(max_dropped_share=0.1).dropped_cap(general) == 0.1
    with pytest.raises(ConvertError, match="--max-dropped-share"):
        Budget(max_dropped_share=1.5)


def test_without_calib_the_answers_alone_are_the_calibration_text(model: Path) -> None:
    """The default corpus is the model's own probe answers (more and longer ones), with no Python docs after them."""
    from converter.score.corpus import DEFAULT_NAME
    from converter.score.stage_options import DOMAIN_PROBE, GENERAL_PROBE, ScoreOptions

    assert ScoreOptions().for_corpus(True).probe_prompts == GENERAL_PROBE[0] == 192
    assert ScoreOptions().for_corpus(False).probe_new_tokens == DOMAIN_PROBE[1] == 48
    assert ScoreOptions(probe_prompts=8, probe_new_tokens=5).for_corpus(True).probe_prompts == 8
    options = replace(OPTIONS, probe_prompts=None, probe_new_tokens=None, probe_heldout=2)
    found = score(open_source(model), open_corpus(None), options)
    assert found.probe is not None and found.probe.prompts("calib") == 144 and found.probe.max_new_tokens == 96
    assert found.general_calibration and DEFAULT_NAME not in found.corpus[0]
    assert found.corpus == ("builtin:general-probe answers (144 prompts)",)
    calib_answers = found.probe.answer_tokens("calib")
    assert found.tokens_counted > calib_answers  # prompts as the model saw them, then its answers
    with_docs = score(open_source(model), open_corpus(None), replace(options, probe_prompts=0, probe_heldout=0))
    assert with_docs.corpus == (DEFAULT_NAME,) and not with_docs.general_calibration
