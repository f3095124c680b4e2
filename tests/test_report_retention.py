"""General-capability retention in the report: the plan's measurement in report.json, report.md and a plot.

A plan whose metadata carries the retention record planning writes (for the plan and for each
auto-split candidate) is exported in every format; report.json must hold it as given, report.md
must say it in words and add the two columns to the auto-split table, and report_retention.png
must be drawn (but not with --no-report). A plan without the record, or with a record saying it
was not measured, must still export and say retention was not measured.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.plan import PrunePlan
from converter.report.retention import NOT_MEASURED, read_retention
from converter.settle import settle_plan
from converter.source import open_source
from tests.support.reference_prune import random_plan
from tests.support.score_fixtures import tiny_model_dir
from tests.test_report import check_common
from tests.support.scratch import ModuleTmp

RETENTION = {"measured": True, "split": "heldout", "prompts": 90, "answer_bytes": 12345, "dropped_share": 0.247,
             "answer_bpb": 0.9621, "dense_answer_bpb": 0.2135, "ratio": 0.9621 / 0.2135}


def _candidate(vocab: int, ffn: int, bpb: float, dropped: float, ratio: float) -> dict[str, Any]:
    return {"vocab": vocab, "ffn": ffn, "bits_per_byte": bpb,
            "retention": {**RETENTION, "dropped_share": dropped, "ratio": ratio, "answer_bpb": ratio * 0.2135}}


@pytest.fixture(scope="module")
def model(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    return tiny_model_dir(module_tmp.mktemp("retention-model"), byte_level_tokenizer_dir)


@pytest.fixture(scope="module")
def settled(model: Path) -> PrunePlan:
    spec = open_source(model).spec
    plan = random_plan(spec.dims.vocab, spec.dims.ffn, spec.dims.layers, 1200, 96, seed=3)
    return settle_plan(open_source(model), plan)[0]


def _save(plan: PrunePlan, folder: Path, **metadata: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return replace(plan, metadata={**plan.metadata, **metadata}).save(folder / "prune_plan.json")


@pytest.fixture(scope="module")
def measured_plan(settled: PrunePlan, module_tmp: ModuleTmp) -> Path:
    v, f = settled.vocab_size, settled.intermediate_size
    table = [{"vocab": v, "ffn": f, "bits_per_byte": 5.1, "retention": RETENTION},
             {**_candidate(v + 300, f - 16, 5.3, 0.12, 2.4), "over_cap": True},
             {"vocab": v - 200, "ffn": f + 16, "bits_per_byte": 5.2}]  # no retention: an older candidate
    return _save(settled, module_tmp.mktemp("retention-plan"), retention=RETENTION, auto_split=table,
                 budget={"target_ratio": 0.3}, heldout_bits_per_byte=5.1, max_dropped_share=0.02)


@pytest.mark.parametrize("fmt", ["hf", "gguf", "onnx"])
def test_measured_retention_in_every_format(tmp_path: Path, model: Path, measured_plan: Path, fmt: str) -> None:
    out = tmp_path / fmt
    extra = ["--outtype", "fp32"] if fmt == "onnx" else []
    assert main([str(model), str(out), "--format", fmt, "--plan", str(measured_plan), "--no-progress", *extra]) == 0
    report = check_common(out)
    assert report["retention"] == RETENTION
    assert report["plots"]["made"]["retention"] == "report_retention.png"
    markdown = (out / "report.md").read_text()
    assert "## General-capability retention" in markdown
    assert ("**24.70%** of the dense model's answer bytes on 90 held-out everyday prompts fall in dropped tokens; "
            "the pruned model needs **4.51 times** the dense model's bits per byte on those answers") in markdown
    assert "| dropped answer bytes | answer bits/byte ratio |" in markdown
    rows = {r["vocab"]: r for r in report["auto_split"]["candidates"]}
    chosen = next(r for r in rows.values() if r["chosen"])
    assert chosen["retention"] == RETENTION
    assert "| 24.70% | 4.51x | **chosen** |" in markdown
    assert "| 12.00% | 2.40x | *over cap* |" in markdown
    assert report["auto_split"]["max_dropped_share"] == 0.02 and rows[max(rows)]["over_cap"] is True
    assert "more than 2% of the general probe's selection answers in dropped tokens" in markdown
    older = min(rows)
    assert "retention" not in rows[older] and f"| {older:,} |" in markdown


def test_no_report_draws_no_retention_plot(tmp_path: Path, model: Path, measured_plan: Path) -> None:
    out = tmp_path / "out"
    assert main([str(model), str(out), "--plan", str(measured_plan), "--no-progress", "--no-report"]) == 0
    assert not list(out.glob("*.png"))
    report = json.loads((out / "report.json").read_text())
    assert report["retention"] == RETENTION and report["plots"]["made"] == {}
    assert "4.51 times" in (out / "report.md").read_text()


def test_retention_measured_without_candidates_has_no_plot(tmp_path: Path, model: Path, settled: PrunePlan) -> None:
    plan = _save(settled, tmp_path / "plan", retention=RETENTION)
    out = tmp_path / "out"
    assert main([str(model), str(out), "--plan", str(plan), "--no-progress"]) == 0
    report = check_common(out)
    assert report["retention"] == RETENTION and "retention" not in report["plots"]["made"]
    assert "auto-split candidate" in report["plots"]["not_made"]["retention"]
    assert "dropped answer bytes" not in (out / "report.md").read_text()


@pytest.mark.parametrize("metadata,reason", [
    ({}, NOT_MEASURED),
    ({"retention": {"measured": False, "reason": "the model is scored layer by layer"}},
     "the model is scored layer by layer"),
], ids=["older-plan", "not-measured"])
def test_unmeasured_retention_is_said(tmp_path: Path, model: Path, settled: PrunePlan, metadata: dict[str, Any],
                                      reason: str) -> None:
    table = [{"vocab": settled.vocab_size, "ffn": settled.intermediate_size, "bits_per_byte": 5.0},
             {"vocab": settled.vocab_size + 100, "ffn": settled.intermediate_size - 8, "bits_per_byte": 5.2}]
    plan = _save(settled, tmp_path / "plan", auto_split=table, **metadata)
    out = tmp_path / "out"
    assert main([str(model), str(out), "--plan", str(plan), "--no-progress"]) == 0
    report = check_common(out)
    assert report["retention"] == {"measured": False, "reason": reason}
    assert report["plots"]["not_made"]["retention"] == reason and not (out / "report_retention.png").exists()
    markdown = (out / "report.md").read_text()
    assert f"Retention was not measured: {reason}." in markdown
    assert "dropped answer bytes" not in markdown and "**chosen**" in markdown


def test_unreadable_records_are_not_measured() -> None:
    assert read_retention(None) == {"measured": False, "reason": NOT_MEASURED}
    assert not read_retention("yes")["measured"]
    broken = read_retention({**RETENTION, "ratio": "4.5", "prompts": -1})
    assert not broken["measured"] and "ratio, prompts" in broken["reason"]
    assert read_retention(RETENTION) == RETENTION
