"""Planning mixture-of-experts models from scores (issue 23): exact sizes, auto-split, refusals, the report.

Tiny Qwen3-MoE (8 experts) and Qwen2-MoE (4 experts and a shared expert) models, top-2, 2 layers,
from transformers' own config classes. `compact-convert IN OUT --target-ratio 0.3` measures at least
two vocabulary/expert-width splits; the export loads in stock transformers with the planned widths,
its logits equal an in-memory pruning of the same plan, and its held-out bits per byte equal what
auto-split simulated with the experts' dropped channels masked. Exact sizes keep each expert's own top
channels by expert_channel_scores under the kept vocabulary (and the shared expert's by its own
scores); an expert the router never chooses is named unused in report.json and report.md; --refit and
sizes that do not fit the model are refused in one line before anything is scored or written.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from converter.cli import main
from converter.errors import ConvertError
from converter.plan import PrunePlan
from converter.score.autosplit import SplitEvaluator, make_plan
from converter.score.bpb import text_bytes
from converter.score.corpus import open_corpus
from converter.score.expert_channels import expert_channel_scores, keep_expert_channels
from converter.score.planner import channel_scores, select_channels
from converter.score.scorer import score
from converter.score.scores import Scores
from converter.score.stage_options import Budget
from converter.source import open_source
from tests.support.moe_models import unrouted_expert_model
from tests.support.reference_moe import prune_moe_state_dict
from tests.support.score_fixtures import ALL_WINDOWS, hf_bits, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, calib_tokens=4096, heldout_tokens=1024, seq_len=128, probe_prompts=2,
                  probe_heldout=2, probe_new_tokens=8, predict_tokens=0)
MOE: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_topk_prob": True},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48},
}
# Widths on multiples of 8: transformers' grouped_mm experts kernel on CPU needs rows of 16-byte multiples.
GRID = ["--ffn-multiple", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("moe-plan-corpus") / "calib.txt", 20, 6)


@pytest.fixture(scope="module")
def models(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
           corpus: Path) -> dict[str, tuple[Path, Path]]:
    """Per family: the model folder and its scores file."""
    out = {}
    for family, overrides in MOE.items():
        root = module_tmp.mktemp(family)
        folder = tiny_model_dir(root / "model", byte_level_tokenizer_dir, family, seed=1, **overrides)
        out[family] = folder, score(open_source(folder), open_corpus([corpus]), OPTIONS).save(root / "scores.st")
    return out


@pytest.fixture(scope="module")
def unused_expert(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
                  corpus: Path) -> tuple[Path, Path]:
    """A Qwen3-MoE whose layer 0 never routes to expert 3 (as in tests/test_moe_scoring.py: hidden channel 0
    is positive for every token and the router weighs it -50 for expert 3), and its scores without probe."""
    root = module_tmp.mktemp("unused")
    folder = unrouted_expert_model(root / "model", byte_level_tokenizer_dir, **MOE["qwen3_moe"])
    options = replace(OPTIONS, probe_prompts=0, probe_heldout=0)
    return folder, score(open_source(folder), open_corpus([corpus]), options).save(root / "scores.st")


@pytest.mark.parametrize("family", list(MOE))
def test_one_shot_target_ratio_exports_what_auto_split_simulated(tmp_path: Path, family: str,
                                                                 models: dict[str, tuple[Path, Path]]) -> None:
    folder, scores_path = models[family]
    out = tmp_path / "out"
    assert main([str(folder), str(out), "--format", "hf", "--target-ratio", "0.3", "--scores", str(scores_path),
                 *GRID]) == 0
    plan = PrunePlan.load(out / "prune_plan.json")
    meta = plan.metadata
    table = meta["auto_split"]
    assert len(table) >= 2 and all(isinstance(r["bits_per_byte"], float) for r in table)
    assert len({r["moe_ffn"] for r in table}) >= 2 and all(r["moe_ffn"] % 8 == 0 for r in table)
    assert meta["params_after_predicted"] <= 0.7 * meta["params_before"]
    original = json.loads((folder / "config.json").read_text())
    assert 0 < plan.moe_intermediate_size < original["moe_intermediate_size"]
    assert plan.intermediate_size == original.get("shared_expert_intermediate_size", 0)  # shared expert whole
    assert len({c for layer in plan.kept_expert_channels for c in layer}) > 1  # experts keep their own channels

    written = json.loads((out / "config.json").read_text())
    assert written["moe_intermediate_size"] == plan.moe_intermediate_size
    assert written["vocab_size"] == plan.vocab_size
    if "shared_expert_intermediate_size" in original:
        assert written["shared_expert_intermediate_size"] == plan.intermediate_size
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, local_files_only=True).eval()
    dense = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    reference = AutoModelForCausalLM.from_config(reloaded.config).eval()
    reference.load_state_dict(prune_moe_state_dict(dict(dense.state_dict()), plan), strict=True)
    ids = torch.randint(0, plan.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)

    # The chosen split's simulated held-out bits per byte (experts masked in place) is the export's own.
    texts = Scores.load(scores_path).heldout_texts
    exported = hf_bits(out, texts, Budget().eval_seq_len) / text_bytes(texts)
    assert meta["heldout_bits_per_byte"] == pytest.approx(exported, abs=2e-5)
    assert exported != pytest.approx(hf_bits(folder, texts, Budget().eval_seq_len) / text_bytes(texts), abs=1e-3)
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["moe_intermediate_size"] == {"before": 32, "after": plan.moe_intermediate_size}
    assert [r["chosen"] for r in report["auto_split"]["candidates"]].count(True) == 1
    assert report["plots"]["made"]["expert_use"] == "report_expert_use.png"
    assert (out / "report_expert_use.png").is_file()


def test_exact_sizes_keep_each_experts_own_top_channels(tmp_path: Path, unused_expert: tuple[Path, Path]) -> None:
    folder, scores_path = unused_expert
    path = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "--vocab-size", "1500",
                 "--moe-intermediate-size", "16", "-o", str(path), *GRID[:-1]]) == 0
    plan = PrunePlan.load(path)
    scores = Scores.load(scores_path)
    assert scores.experts is not None and plan.vocab_size <= 1500 and plan.moe_intermediate_size == 16
    importance = expert_channel_scores(scores.experts, scores.layout, scores.counts, plan.kept_token_ids)
    assert plan.kept_expert_channels == keep_expert_channels(importance, 16)
    for layer, experts in enumerate(plan.kept_expert_channels):
        for expert, kept in enumerate(experts):
            row = importance[layer, expert]
            assert row[list(kept)].min() >= np.delete(row, list(kept)).max()
    assert len(set(plan.kept_expert_channels[1])) == 8  # every expert its own cut
    use = plan.metadata["expert_use"]
    assert [r["tokens"] for r in use] == scores.experts.tokens.reshape(-1).tolist()

    out = tmp_path / "out"
    assert main([str(folder), str(out), "--plan", str(path), "--scores", str(scores_path), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert scores.experts.tokens[0, 3] == 0 and report["expert_use"]["tokens"][0][3] == 0
    assert {"layer": 0, "expert": 3} in report["expert_use"]["unused"]
    assert all(scores.experts.tokens[u["layer"], u["expert"]] == 0 for u in report["expert_use"]["unused"])
    assert report["expert_use"]["tokens"] == scores.experts.tokens.tolist()
    md = (out / "report.md").read_text()
    named = md.split("received no token**: ", 1)[1].split(".", 1)[0].split(", ")
    assert "## Expert use" in md and "layer 0 expert 3" in named
    assert len(named) == len(report["expert_use"]["unused"]) == int((scores.experts.tokens == 0).sum())


def test_exact_sizes_cut_the_shared_expert_by_its_own_scores(models: dict[str, tuple[Path, Path]]) -> None:
    folder, scores_path = models["qwen2_moe"]
    source, scores = open_source(folder), Scores.load(scores_path)
    plan = make_plan(source, scores, Budget(intermediate_size=24, moe_intermediate_size=8, device="cpu"))
    assert plan.vocab_size == 2000 and plan.intermediate_size == 24 and plan.moe_intermediate_size == 8
    assert plan.kept_ffn_channels == select_channels(channel_scores(scores, "compact", None), 24)
    assert scores.experts is not None
    every = expert_channel_scores(scores.experts, scores.layout, scores.counts, None)
    assert plan.kept_expert_channels == keep_expert_channels(every, 8)
    whole = make_plan(source, scores, Budget(moe_intermediate_size=8, device="cpu"))
    assert whole.intermediate_size == 48 and whole.kept_expert_channels == plan.kept_expert_channels
    # The masked simulation runs the same layer by layer as whole (the experts' hooks see loaded weights).
    simulated = [SplitEvaluator(source, scores, Budget(device="cpu", layerwise=mode, eval_seq_len=128))
                 for mode in (False, True)]
    at_once, layered = (e.bits_per_byte(plan) for e in simulated)
    dense = simulated[0].bits_per_byte(PrunePlan.identity(source.spec))
    # Random tiny weights: the cut moves bits per byte by about 1e-4, a hundred times the agreement asked.
    assert abs(layered - at_once) < 1e-6 and abs(at_once - dense) > 5e-5


BAD = [
    (["--target-ratio", "0.3", "--refit"], "--refit is not built for mixture-of-experts models"),
    (["--intermediate-size", "16"], "this model has none; its experts' width is --moe-intermediate-size"),
    (["--moe-intermediate-size", "64"], "--moe-intermediate-size 64 must be between 1 and the experts' 32"),
    (["--target-ratio", "0.3", "--moe-intermediate-size", "16"], "not both"),
    (["--moe-intermediate-size", "16", "--method", "magnitude"], "--method magnitude is not built for mixture"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_expert_budgets_fail_in_one_line(tmp_path: Path, unused_expert: tuple[Path, Path], corpus: Path,
                                             capsys: pytest.CaptureFixture, flags: list[str], message: str) -> None:
    folder, scores_path = unused_expert
    out = tmp_path / "plan.json"
    assert main(["plan", str(folder), "--scores", str(scores_path), "-o", str(out), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    # The one-shot command refuses before scoring (a nonexistent corpus would fail later).
    assert main([str(folder), str(tmp_path / "out"), "--device", "cpu", "--calib", "/nonexistent", *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_dense_models_refuse_an_experts_width() -> None:
    with pytest.raises(ConvertError, match="--moe-intermediate-size is for mixture-of-experts models"):
        Budget(moe_intermediate_size=16).check(2000, 128)
    Budget(moe_intermediate_size=16).check(2000, 0, 32)
