"""CLI flags generated from the options dataclasses: one declaration, every command in step.

The one-shot `compact-convert IN OUT` accepts every option string of `score`, `plan` and the
export (except the few that name another command's output or serve sharded scoring, listed with
their reason); a one-shot run with stage-only flags of old (--predict-tokens, --layer-by-layer,
--seq-len) reaches the scorer and shows in the plan; value checks answer alike in every command;
the stage commands that need no model run start, and `plan` with exact sizes runs, with torch
unimportable; `--no-report` writes report.json and report.md but no plot, and forks nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.commands import convert, plan, score
from converter.commands.flags import add_options, options_from
from converter.flag_fields import flag_of
from converter.plan import PrunePlan
from converter.score.corpus import open_corpus
from converter.score.scores import Scores
from converter.score.stage_options import METHODS, Budget, ScoreOptions
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.reference_prune import random_plan
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

ROOT = Path(__file__).resolve().parent.parent

# Option strings of the stage commands that the one-shot command does not take, and why.
NOT_ONE_SHOT = {
    "-o": "names the stage's own output file; the one-shot command writes OUT (a positional)",
    "--output": "the same, spelled long",
    "--layout-from": "reuses a bucket layout so shard scores merge; the one-shot command scores once and merges "
                     "nothing",
    "--counts-only": "a counts-only scores file cannot rank FFN channels, which the one-shot plan needs",
    "--no-counts-only": "the negative of --counts-only",
}

# `python -c` with a meta-path finder that makes torch unimportable, then the CLI.
NO_TORCH = """
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked by the test")
        return None


sys.meta_path.insert(0, NoTorch())
from converter.cli import main

code = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
sys.exit(code)
"""


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def run_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def model(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    return tiny_model_dir(module_tmp.mktemp("flags-model"), byte_level_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("flags-corpus") / "calib.txt", 10, 12)


def test_one_shot_takes_every_stage_and_export_option() -> None:
    one_shot = option_strings(convert.build_parser())
    export_parser = argparse.ArgumentParser()
    add_options(export_parser, ExportOptions)
    stages = option_strings(score.build_parser("score")) | option_strings(plan.build_parser("plan"))
    missing = (stages | option_strings(export_parser)) - one_shot - set(NOT_ONE_SHOT)
    assert not missing, f"the one-shot command lacks {sorted(missing)}"
    assert set(NOT_ONE_SHOT) <= stages, "every exception names a real stage option"
    assert not set(NOT_ONE_SHOT) & one_shot
    for flag in ("--predict-tokens", "--layer-by-layer", "--no-layer-by-layer", "--seq-len", "--seed", "--focus",
                 "--splits", "--batch-tokens", "--heldout-tokens", "--report", "--no-report", "--pre", "--refit"):
        assert flag in one_shot, flag


def test_every_field_says_whether_it_is_a_flag() -> None:
    for cls in (ScoreOptions, Budget, ExportOptions):
        for field in dataclasses.fields(cls):
            flag_of(field)  # raises for a field that declares neither flag(...) nor internal(...)
    internal = {f.name for cls in (ScoreOptions, Budget, ExportOptions) for f in dataclasses.fields(cls)
                if flag_of(f) is None}
    assert internal == {"heldout_percent", "bins_per_octave", "progress", "refine_rounds", "eval_seq_len", "ridge",
                        "command_line", "row_block", "row_block_why", "importance"}


def test_generated_flags_keep_their_spellings_defaults_and_types() -> None:
    parser = convert.build_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    assert actions["--layer-by-layer"].dest == "layer_by_layer" and actions["--layer-by-layer"].default is None
    assert isinstance(actions["--refit"], argparse.BooleanOptionalAction) and "--no-refit" in actions
    assert actions["--pre"].dest == "pre" and actions["--report"].default is True
    assert actions["--method"].choices == METHODS and actions["--device"].choices == ("auto", "cuda", "cpu")
    defaults = parser.parse_args(["in", "out"])
    assert options_from(defaults, Budget) == Budget()
    assert options_from(defaults, ScoreOptions, progress=True) == dataclasses.replace(ScoreOptions(), progress=True)
    assert options_from(defaults, ExportOptions) == ExportOptions()
    args = parser.parse_args(["in", "out", "--layer-by-layer", "--refit", "--device", "cpu", "--pre", "llama-bpe",
                              "--max-shard-size", "500MB", "--no-report", "--ffn-multiple", "64", "--seq-len", "128"])
    budget, scoring = options_from(args, Budget), options_from(args, ScoreOptions)
    assert budget.layerwise is scoring.layerwise is True and budget.refit is scoring.gram is True
    assert budget.device == scoring.device == "cpu" and budget.ffn_multiple == 64 and scoring.seq_len == 128
    export = options_from(args, ExportOptions)
    assert export.pre_tokenizer == "llama-bpe" and export.max_shard_size == 500 * 10**6 and not export.report_plots


@pytest.mark.parametrize("flags,message", [
    (["--calib-tokens", "0"], "--calib-tokens must be at least 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be at least 1, got 0"),
    (["--batch-tokens", "-5"], "--batch-tokens must be at least 1, got -5"),
    (["--heldout-tokens", "-1"], "--heldout-tokens must be at least 0, got -1"),
    (["--predict-tokens", "-1"], "--predict-tokens must be at least 0, got -1"),
])
def test_score_value_checks_are_the_same_in_every_command(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          flags: list[str], message: str) -> None:
    missing = str(tmp_path / "no-model")
    for argv in (["score", missing, "-o", str(tmp_path / "s.st"), *flags], [missing, str(tmp_path / "out"), *flags]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags,message", [(["--splits", "0"], "--splits must be at least 1, got 0"),
                                           (["--ffn-multiple", "0"], "--ffn-multiple must be at least 1, got 0")])
def test_budget_value_checks_are_the_same_in_every_command(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           flags: list[str], message: str) -> None:
    missing = str(tmp_path / "no-model")
    for argv in (["plan", missing, "--scores", missing, "-o", str(tmp_path / "p.json"), *flags],
                 [missing, str(tmp_path / "out"), *flags]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_one_shot_takes_the_scoring_flags(tmp_path: Path, model: Path, corpus: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import converter.score.engine as engine
    import converter.score.scorer as scorer

    runs: list[bool] = []

    class Spy(engine.ModelRunner):
        def __init__(self, source: Any, device: Any, layerwise: bool) -> None:
            runs.append(layerwise)
            super().__init__(source, device, layerwise)

    monkeypatch.setattr(scorer, "ModelRunner", Spy)
    monkeypatch.setattr(engine, "ModelRunner", Spy)
    out = tmp_path / "out"
    argv = [str(model), str(out), "--predict-tokens", "64", "--layer-by-layer", "--seq-len", "256",
            "--target-ratio", "0.2", "--calib", str(corpus), "--calib-tokens", "2048", "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0
    meta = PrunePlan.load(out / "prune_plan.json").metadata
    # 2048 tokens in windows of 256: 8 sequences; a next-token sum every 2048 // 64 = 32 positions: at most 64
    # predicted (the defaults would give 4 sequences of 512 and a sum at every position).
    found = re.search(r"([\d,]+) scored \(([\d,]+) predicted\) in (\d+) sequences", meta["scores"])
    assert found, meta["scores"]
    scored, predicted, sequences = (int(g.replace(",", "")) for g in found.groups())
    assert sequences == 8 and 1700 < scored <= 2048 and scored // 32 <= predicted <= 64, meta["scores"]
    assert meta["budget"]["target_ratio"] == 0.2 and len(meta["auto_split"]) >= 2
    assert runs and all(runs), "scoring and the split evaluation ran layer by layer"
    report = json.loads((out / "report.json").read_text())
    assert report["command_line"] == shlex.join(["compact-convert", *["OUT" if a == str(out) else a for a in argv]])


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["score", "--help"], ["merge-scores", "--help"],
                                  ["verify", "--help"]], ids=lambda a: " ".join(a))
def test_help_needs_no_torch(argv: list[str]) -> None:
    done = run_without_torch(*argv)
    assert done.returncode == 0, done.stderr
    assert "usage: compact-convert" in done.stdout


def test_plan_with_exact_sizes_and_merge_scores_need_no_torch(tmp_path: Path, model: Path, corpus: Path) -> None:
    """Exact sizes plan without torch; a --target-ratio imports it to measure the candidate splits."""
    from converter.score.scorer import score as run_score

    source = open_source(model)
    options = dataclasses.replace(ALL_WINDOWS, calib_tokens=2048, heldout_tokens=512)
    first = run_score(source, open_corpus([corpus]), options)
    other = write_corpus(tmp_path / "other.txt", 30, 6)
    second = run_score(source, open_corpus([other]), options, first.layout)
    a, b = first.save(tmp_path / "a.safetensors"), second.save(tmp_path / "b.safetensors")
    merged = tmp_path / "merged.safetensors"
    done = run_without_torch("merge-scores", str(a), str(b), "-o", str(merged))
    assert done.returncode == 0, done.stderr
    assert Scores.load(merged).tokens_counted == first.tokens_counted + second.tokens_counted
    plan_path = tmp_path / "plan.json"
    done = run_without_torch("plan", str(model), "--scores", str(merged), "--vocab-size", "1000",
                             "--intermediate-size", "96", "--method", "magnitude", "-o", str(plan_path))
    assert done.returncode == 0, done.stderr
    written = PrunePlan.load(plan_path)
    assert written.vocab_size <= 1000 and written.intermediate_size == 96
    assert written.metadata["method"] == "magnitude"


def test_no_report_writes_the_report_files_but_no_plot(tmp_path: Path, model: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import converter.report.write as write

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("--no-report must not start a plot process or thread")

    class RefusedProcess(write.PlotProcess):
        __init__ = refuse

    monkeypatch.setattr(write, "PlotProcess", RefusedProcess)
    monkeypatch.setattr(write, "ThreadPoolExecutor", refuse)
    monkeypatch.setattr(write.os, "fork", refuse)
    spec = open_source(model).spec
    plan_path = random_plan(spec.dims.vocab, spec.dims.ffn, spec.dims.layers, 1200, 96, seed=3).save(
        tmp_path / "prune_plan.json")
    out = tmp_path / "out"
    assert main([str(model), str(out), "--plan", str(plan_path), "--no-report", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file() and not list(out.glob("*.png"))
    assert report["plots"] == {"made": {}, "not_made": {"all": write.PLOTS_OFF}}
    assert write.PLOTS_OFF in (out / "report.md").read_text()
    assert {f["path"] for f in report["output"]["files"]} == \
        {p.name for p in out.iterdir()} - {"report.json", "report.md"}
    assert report["command_line"].endswith("--no-report")
