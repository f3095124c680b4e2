"""The report every export writes: report.json, report.md and PNG plots, checked against the files.

For each format a tiny Llama with a real trained byte-level BPE tokenizer is exported through
the CLI with a --plan; the parameter counts in report.json must equal the tensors actually
written (read back from the safetensors, or with gguf's GGUFReader), every listed size must be
the file's os.stat size, and the PNGs must decode to images of sensible dimensions. The one-shot
path (calibration text, --target-ratio, auto-split) must add the coverage and auto-split
sections, consistent with the prune_plan.json it wrote, and all four plots; `--plan` with
`--scores` adds coverage and importance; a second identical run writes byte-identical reports.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from converter.cli import main
from converter.source import open_source
from converter.plan import PrunePlan
from converter.score.scorer import score
from converter.score.corpus import open_corpus
from converter.score.planner import channel_scores, coverage
from converter.score.scores import Scores
from tests.support.reference_prune import random_plan
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

PNG_NAMES = {"parameters": "report_parameters.png", "coverage": "report_coverage.png",
             "ffn_importance": "report_ffn_importance.png", "auto_split": "report_auto_split.png",
             "retention": "report_retention.png"}
HF_COMPONENTS = [(r"embed_tokens\.", "embedding"), (r"^lm_head\.", "lm_head"),
                 (r"self_attn\.(q|k|v|o)_proj\.", "attention"), (r"\.mlp\.", "ffn")]
GGUF_COMPONENTS = [(r"^token_embd\.", "embedding"), (r"^output\.", "lm_head"),
                   (r"\.attn_(q|k|v|output)\.", "attention"), (r"\.ffn_(gate|up|down)\.", "ffn")]


def _component(name: str, table: list[tuple[str, str]]) -> str:
    return next((c for pattern, c in table if re.search(pattern, name)), "norms_other")


def _tally(pairs: list[tuple[str, int]], table: list[tuple[str, str]]) -> dict[str, int]:
    out = dict.fromkeys(("embedding", "attention", "ffn", "lm_head", "norms_other"), 0)
    for name, numel in pairs:
        out[_component(name, table)] += numel
    out["total"] = sum(out.values())
    return out


def hf_params(folder: Path) -> dict[str, int]:
    pairs = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            pairs += [(k, math.prod(st.get_slice(k).get_shape())) for k in st.keys()]
    return _tally(pairs, HF_COMPONENTS)


def gguf_params(folder: Path) -> dict[str, int]:
    from gguf import GGUFReader

    (path,) = folder.glob("*.gguf")
    reader = GGUFReader(str(path))
    pairs = [(t.name, int(t.n_elements)) for t in reader.tensors if t.name != "rope_freqs.weight"]
    return _tally(pairs, GGUF_COMPONENTS)


def check_common(out: Path) -> dict[str, Any]:
    """Files present, sizes true, PNGs valid; returns report.json."""
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    listed = {f["path"]: f["bytes"] for f in report["output"]["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"report.json", "report.md"}
    for path, size in listed.items():
        assert (out / path).stat().st_size == size, path
    assert report["output"]["total_bytes"] == sum(listed.values())
    weights = {w["path"]: w["bytes"] for w in report["source"]["weight_files"]}
    src = Path(report["source"]["folder"])
    assert weights == {"model.safetensors": (src / "model.safetensors").stat().st_size}
    made = report["plots"]["made"]
    assert made["parameters"] == PNG_NAMES["parameters"]
    for key, name in made.items():
        assert name == PNG_NAMES[key]
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out / name) as image:
            image.load()
            assert 600 <= image.width <= 1600 and 350 <= image.height <= 1600, (name, image.size)
        assert f"]({name})" in markdown
    for key, reason in report["plots"]["not_made"].items():
        assert reason and reason in markdown, key
    assert report["command_line"].startswith("compact-convert ")
    assert f"    {report['command_line']}" in markdown
    return report


@pytest.fixture(scope="module")
def model(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    return tiny_model_dir(module_tmp.mktemp("report-model"), byte_level_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(module_tmp: ModuleTmp) -> Path:
    return write_corpus(module_tmp.mktemp("report-corpus") / "calib.txt", 10, 12)


@pytest.fixture(scope="module")
def plan_path(model: Path, module_tmp: ModuleTmp) -> Path:
    spec = open_source(model).spec
    plan = random_plan(spec.dims.vocab, spec.dims.ffn, spec.dims.layers, 1200, 96, seed=3)
    return plan.save(module_tmp.mktemp("report-plan") / "prune_plan.json")


@pytest.mark.parametrize("fmt", ["hf", "gguf", "onnx"])
def test_report_of_every_format(tmp_path: Path, model: Path, plan_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    extra = ["--outtype", "fp32"] if fmt == "onnx" else []
    assert main([str(model), str(out), "--format", fmt, "--plan", str(plan_path), "--no-progress", *extra]) == 0
    report = check_common(out)
    written = json.loads((out / "prune_plan.json").read_text())
    assert report["format"] == fmt
    assert report["source"]["fingerprint"] == open_source(model).checkpoint.fingerprint()
    assert report["plan"]["vocab_size"] == {"before": 2000, "after": written["vocab_size"]}
    assert report["plan"]["intermediate_size"] == {"before": 160, "after": 96}
    params = report["parameters"]
    assert params["before"] == hf_params(model)
    if fmt == "hf":
        assert params["after"] == hf_params(out)
    if fmt == "gguf":
        assert params["after"] == gguf_params(out)
    assert params["after"]["ffn"] == 2 * 3 * 96 * 64
    assert params["after"]["embedding"] == params["after"]["lm_head"] == written["vocab_size"] * 64
    assert params["removed"] == params["before"]["total"] - params["after"]["total"]
    assert not report["calibration"]["available"] and "--scores" in report["calibration"]["reason"]
    assert not report["auto_split"]["ran"]
    assert set(report["plots"]["not_made"]) == {"coverage", "ffn_importance", "auto_split", "retention"}
    assert not report["retention"]["measured"] and "Retention was not measured" in (out / "report.md").read_text()


def test_tied_head_counts_zero(tmp_path: Path, byte_level_tokenizer_dir: Path) -> None:
    folder = tiny_model_dir(tmp_path / "tied", byte_level_tokenizer_dir, tied=True)
    spec = open_source(folder).spec
    plan = random_plan(spec.dims.vocab, spec.dims.ffn, spec.dims.layers, 1500, 64, seed=1)
    out = tmp_path / "out"
    assert main([str(folder), str(out), "--format", "gguf", "--plan", str(plan.save(tmp_path / "p.json")),
                 "--no-progress"]) == 0
    report = check_common(out)
    assert report["parameters"]["before"]["lm_head"] == report["parameters"]["after"]["lm_head"] == 0
    assert report["parameters"]["after"] == gguf_params(out)
    assert "tied to the embedding" in (out / "report.md").read_text()


def test_one_shot_report_matches_plan(tmp_path: Path, model: Path, corpus: Path) -> None:
    out = tmp_path / "out"
    assert main([str(model), str(out), "--calib", str(corpus), "--target-ratio", "0.3", "--device", "cpu",
                 "--calib-tokens", "2048", "--no-progress"]) == 0
    report = check_common(out)
    plan = PrunePlan.load(out / "prune_plan.json")
    meta = plan.metadata
    # Retention (and its plot) comes with plans whose scoring measured it.
    measured = report["retention"]["measured"]
    assert set(report["plots"]["made"]) == set(PNG_NAMES) - (set() if measured else {"retention"})
    assert set(report["plots"]["not_made"]) == (set() if measured else {"retention"})
    assert report["parameters"]["after"] == hf_params(out)
    assert report["parameters"]["after"]["total"] == meta["params_after_predicted"]

    cal = report["calibration"]
    assert cal["available"] and cal["corpus"] == [str(corpus)]
    assert cal["kept_vocab_coverage"] == meta["calibration_coverage"]
    assert 0.5 < cal["kept_vocab_coverage"] <= cal["top_n_coverage_at_kept_size"] <= 1
    needed = list(cal["vocab_needed_for"].values())
    assert needed == sorted(needed) and needed[-1] <= cal["distinct_tokens_seen"]

    splits = report["auto_split"]
    assert splits["ran"] and splits["target_ratio"] == 0.3
    assert [(r["vocab"], r["ffn"], r["bits_per_byte"]) for r in splits["candidates"]] == \
        [(r["vocab"], r["ffn"], r["bits_per_byte"]) for r in meta["auto_split"]]
    chosen = [r for r in splits["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and len(splits["candidates"]) >= 2
    assert (chosen[0]["vocab"], chosen[0]["ffn"]) == (plan.vocab_size, plan.intermediate_size)
    assert chosen[0]["bits_per_byte"] == splits["heldout_bits_per_byte"] == meta["heldout_bits_per_byte"]
    # With --general-weight above 0 the blended objective picks the split, else held-out bits per byte.
    key = "objective" if "objective" in chosen[0] else "bits_per_byte"
    assert chosen[0][key] == min(r[key] for r in splits["candidates"])
    if key == "objective":
        assert "| objective |" in (out / "report.md").read_text()
    assert chosen[0]["params"] == meta["params_after_predicted"]
    limit = meta["budget"]["params_budget"]
    assert all(r["params"] <= limit for r in splits["candidates"])
    assert "**chosen**" in (out / "report.md").read_text()

    imp = report["ffn_importance"]
    assert imp["available"] and imp["method"] == "compact"
    assert len(imp["kept_importance_share_per_layer"]) == 2
    # The kept channels are the top ones, so they hold more than their share of the importance.
    assert all(s > plan.intermediate_size / 160 for s in imp["kept_importance_share_per_layer"])


def test_plan_with_scores_and_identical_reruns(tmp_path: Path, model: Path, corpus: Path, plan_path: Path,
                                               byte_level_tokenizer_dir: Path) -> None:
    scores = score(open_source(model), open_corpus([corpus]), ALL_WINDOWS)
    scores_path = scores.save(tmp_path / "scores.safetensors")
    out = tmp_path / "out"
    argv = [str(model), str(out), "--plan", str(plan_path), "--scores", str(scores_path), "--no-progress", "--force"]
    assert main(argv) == 0
    report = check_common(out)
    assert set(report["plots"]["made"]) == {"parameters", "coverage", "ffn_importance"}
    plan = PrunePlan.load(out / "prune_plan.json")
    loaded = Scores.load(scores_path)
    assert report["calibration"]["kept_vocab_coverage"] == round(coverage(loaded.counts, plan.kept_token_ids), 6)
    assert report["calibration"]["scores"] == str(scores_path)
    imp = channel_scores(loaded, "compact", plan.kept_token_ids)
    expected = [round(float(imp[layer, list(c)].sum() / imp[layer].sum()), 6)
                for layer, c in enumerate(plan.kept_ffn_channels)]
    assert report["ffn_importance"]["kept_importance_share_per_layer"] == expected
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("report")}
    assert len(first) == 5
    assert main(argv) == 0
    second = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("report")}
    assert first == second

    other = tiny_model_dir(tmp_path / "other", byte_level_tokenizer_dir, seed=5)
    assert main([str(other), str(tmp_path / "o2"), "--plan", str(plan_path), "--scores", str(scores_path)]) == 2
    assert not (tmp_path / "o2").exists()
    assert np.isclose(sum(expected) / len(expected), report["ffn_importance"]["kept_importance_share_mean"], atol=1e-6)


def test_plots_drawn_in_a_child_process_equal_the_thread_path(tmp_path: Path, model: Path, plan_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux the plots come from a forked child; the worker-thread fallback writes the same bytes."""
    import converter.report.write as write

    assert write.use_fork()
    args = ["--plan", str(plan_path), "--no-progress"]
    assert main([str(model), str(tmp_path / "forked"), *args]) == 0
    monkeypatch.setattr(write, "use_fork", lambda: False)
    assert main([str(model), str(tmp_path / "thread"), *args]) == 0
    for name in ("report_parameters.png", "report.json", "report.md"):
        assert (tmp_path / "forked" / name).read_bytes() == (tmp_path / "thread" / name).read_bytes()


def test_a_failing_plot_process_fails_the_export_cleanly(tmp_path: Path, model: Path, plan_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A disk error in the child comes back as the export's one-line error; nothing is left behind."""
    import converter.report.write as write

    def full_disk(collected: Any, staged: Path) -> Any:
        raise OSError(28, "No space left on device", str(staged / "report_parameters.png"))

    monkeypatch.setattr(write, "_draw", full_disk)
    out = tmp_path / "out"
    assert main([str(model), str(out), "--plan", str(plan_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "writing the output failed (No space left on device)" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_an_export_that_fails_stops_the_plot_process(tmp_path: Path, model: Path, plan_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is killed and reaped before the staging folder is removed, without waiting for it."""
    import os
    import time

    import converter.report.write as write
    import exporters.hf

    children: list[int] = []
    real_init = write.PlotProcess.__init__

    def record(self: Any, collected: Any, staged: Path) -> None:
        real_init(self, collected, staged)
        children.append(self.pid)

    def slow_draw(collected: Any, staged: Path) -> Any:
        time.sleep(60)

    def broken_export(*args: Any) -> Any:
        raise OSError(5, "Input/output error", "model.safetensors")

    monkeypatch.setattr(write, "_draw", slow_draw)
    monkeypatch.setattr(write.PlotProcess, "__init__", record)
    monkeypatch.setattr(exporters.hf, "export", broken_export)
    start = time.monotonic()
    assert main([str(model), str(tmp_path / "out"), "--plan", str(plan_path), "--no-progress"]) == 2
    assert time.monotonic() - start < 30
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(children[0], os.WNOHANG)  # already reaped: no process and no zombie left
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
