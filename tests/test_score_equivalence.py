"""Scores do not depend on how the work is cut: layer by layer, by shards, or by ranks.

(a) Layer-by-layer scoring equals whole-model scoring on tiny Llama, Qwen2 and Gemma3 models
(Gemma3 mixes sliding and global attention layers, so per-layer arguments differ); (b) scores of
two corpus shards, merged with `merge-scores`, equal scoring the concatenated corpus; (c) two
gloo ranks under torchrun give the one-rank result; (d) merging refuses another model's scores,
another bucket layout, or a mix of files with and without the refit's Gram matrices, writing
nothing. Every equivalence also covers the Gram matrices `--refit` records and the model's
predicted counts; (e) the predicted counts equal stock transformers' next-token probabilities
summed over the sampled positions.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from converter.source import open_source
from converter.score.scorer import score
from converter.score.corpus import open_corpus
from converter.score.scores import Scores
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_files(module_tmp: ModuleTmp) -> tuple[Path, Path]:
    root = module_tmp.mktemp("corpus")
    return write_corpus(root / "a.txt", 0, 6), write_corpus(root / "b.txt", 6, 6)


@pytest.fixture(scope="module")
def llama_dir(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    return tiny_model_dir(module_tmp.mktemp("llama"), byte_level_tokenizer_dir)


def assert_same_scores(a: Scores, b: Scores) -> None:
    assert np.array_equal(a.counts, b.counts)
    assert a.layout.layout_id == b.layout.layout_id
    assert (a.tokens_counted, a.tokens_scored, a.sequences, a.documents) == \
        (b.tokens_counted, b.tokens_scored, b.sequences, b.documents)
    assert a.heldout == b.heldout
    np.testing.assert_allclose(a.importance, b.importance, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a.act2, b.act2, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    assert a.tokens_predicted == b.tokens_predicted and a.tokens_predicted > 0
    assert a.predicted is not None and b.predicted is not None and a.predicted.sum() > 0
    np.testing.assert_allclose(a.predicted, b.predicted, rtol=1e-4, atol=1e-6 * float(a.predicted.max()))
    assert (a.gram is None) == (b.gram is None)
    if a.gram is not None:
        assert a.gram.shape == (a.layers, a.ffn, a.ffn) and np.abs(a.gram).max() > 0
        np.testing.assert_allclose(a.gram, b.gram, rtol=1e-4, atol=1e-6 * float(np.abs(a.gram).max()))
    # The sums of squared matmul inputs behind the GGUF's importance matrix (converter.score.matmul_inputs).
    assert a.matmul is not None and b.matmul is not None and set(a.matmul.sums) == set(b.matmul.sums)
    assert a.matmul.tokens == b.matmul.tokens == a.tokens_scored
    for name, sums in a.matmul.sums.items():
        np.testing.assert_allclose(sums, b.matmul.sums[name], rtol=1e-4, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "granite"])
def test_layer_by_layer_equals_whole_model(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                           corpus_files: tuple[Path, Path], family: str) -> None:
    overrides = {"layer_types": ["sliding_attention", "full_attention"]} if family == "gemma3_text" else {}
    source = open_source(tiny_model_dir(tmp_path / family, byte_level_tokenizer_dir, family, **overrides))
    corpus = open_corpus([corpus_files[0]])
    whole = score(source, corpus, replace(ALL_WINDOWS, layerwise=False, gram=True))
    layered = score(source, corpus, replace(ALL_WINDOWS, layerwise=True, gram=True))
    assert whole.tokens_scored > 1000 and whole.importance.sum() > 0
    assert np.count_nonzero(whole.importance.sum(axis=(0, 2))) > 10
    assert_same_scores(whole, layered)


def test_merged_shards_equal_concatenated_corpus(tmp_path: Path, llama_dir: Path,
                                                 corpus_files: tuple[Path, Path]) -> None:
    a, b = corpus_files
    base = ["score", str(llama_dir), "--device", "cpu", "--seq-len", "64", "--calib-tokens", str(1 << 20),
            "--heldout-tokens", str(1 << 20), "--no-progress", "--refit"]
    assert main([*base, "--calib", str(a), "--calib", str(b), "--counts-only", "-o", str(tmp_path / "layout.st")]) == 0
    for name, part in (("a", a), ("b", b)):
        assert main([*base, "--calib", str(part), "--layout-from", str(tmp_path / "layout.st"),
                     "-o", str(tmp_path / f"{name}.st")]) == 0
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "b.st"), "-o", str(tmp_path / "ab.st")]) == 0
    assert main([*base, "--calib", str(a), "--calib", str(b), "-o", str(tmp_path / "whole.st")]) == 0
    merged, whole = Scores.load(tmp_path / "ab.st"), Scores.load(tmp_path / "whole.st")
    assert whole.heldout and merged.corpus == (str(a), str(b))
    assert_same_scores(merged, whole)
    shard = Scores.load(tmp_path / "a.st")
    assert 0 < shard.tokens_counted < whole.tokens_counted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_rank(tmp_path: Path, llama_dir: Path, corpus_files: tuple[Path, Path]) -> None:
    args = ["score", str(llama_dir), "--device", "cpu", "--seq-len", "64", "--calib-tokens", str(1 << 20),
            "--heldout-tokens", str(1 << 20), "--no-progress", "--calib", str(corpus_files[0]),
            "--calib", str(corpus_files[1]), "--refit"]
    assert main([*args, "-o", str(tmp_path / "one.st")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "converter.cli",
           *args, "-o", str(tmp_path / "two.st")]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"stdout: {done.stdout[-1500:]}\nstderr: {done.stderr[-3000:]}"
    assert "(2 ranks)" in done.stdout
    assert_same_scores(Scores.load(tmp_path / "two.st"), Scores.load(tmp_path / "one.st"))


def test_merge_refuses_other_model_or_layout(tmp_path: Path, llama_dir: Path, byte_level_tokenizer_dir: Path,
                                             corpus_files: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    other = tiny_model_dir(tmp_path / "other", byte_level_tokenizer_dir, seed=7)
    a, b = corpus_files
    base = ["--device", "cpu", "--seq-len", "64", "--calib-tokens", "512", "--no-progress"]
    assert main(["score", str(llama_dir), "--calib", str(a), *base, "-o", str(tmp_path / "a.st")]) == 0
    assert main(["score", str(llama_dir), "--calib", str(b), *base, "-o", str(tmp_path / "b.st")]) == 0
    assert main(["score", str(other), "--calib", str(a), *base, "-o", str(tmp_path / "x.st")]) == 0
    capsys.readouterr()
    out = tmp_path / "merged.st"
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "x.st"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "x.st: was scored on another model" in err and err.count("\n") == 1
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "b.st"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b.st: has a different bucket layout" in err and "--layout-from" in err
    assert main(["score", str(llama_dir), "--calib", str(b), *base, "--layout-from", str(tmp_path / "a.st"),
                 "--refit", "-o", str(tmp_path / "g.st")]) == 0
    capsys.readouterr()
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "g.st"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "g.st: was scored with --refit" in err and err.count("\n") == 1
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "a.st"), "-o", str(tmp_path / "a.st")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert not out.exists()
    assert main(["score", str(llama_dir), "--calib", str(b), *base, "--layout-from", str(tmp_path / "x.st"),
                 "-o", str(out)]) == 2
    assert "scores were made for another model" in capsys.readouterr().err and not out.exists()


def test_act2_probe_scatter_equals_one_hot_matmul() -> None:
    import torch

    from converter.score.scorer import Act2Probe

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 9, (40,), generator=g), torch.randint(0, 9, (24,), generator=g)]
    acts = [torch.randn(2, 20, 16, generator=g), torch.randn(2, 12, 16, generator=g)]
    probes = [Act2Probe(1, 8, 16, batches, torch.device("cpu"), matmul=m, gram=True) for m in (False, True)]
    for probe in probes:
        for index, x in enumerate(acts):
            probe.begin_batch(index)
            probe.down_input(0, x)
    expected = torch.zeros(9, 16, dtype=torch.float64)
    gram = torch.zeros(16, 16, dtype=torch.float64)
    for ids, x in zip(batches, acts):
        for pos, bucket in enumerate(ids.tolist()):
            row = x.reshape(-1, 16)[pos].double()
            expected[bucket] += row ** 2
            if bucket != 8:  # the last bucket is padding: no part of the refit's statistics
                gram += torch.outer(row, row)
    for probe in probes:
        torch.testing.assert_close(probe.sums[0], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(probe.gram[0], gram, rtol=1e-5, atol=1e-5)


# Gemma 3's final soft-capping and Granite's embedding multiplier and logits divisor are applied by scoring too.
PREDICTED_CASES = {"gemma3_text": {"layer_types": ["sliding_attention", "full_attention"],
                                   "final_logit_softcapping": 5.0}, "granite": {}}


@pytest.mark.parametrize("family", list(PREDICTED_CASES))
def test_predicted_counts_equal_transformers_probabilities(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                                            corpus_files: tuple[Path, Path], family: str) -> None:
    """Every stride-th real position of each window adds softmax(logits) of stock transformers' model."""
    import torch
    from transformers import AutoModelForCausalLM

    from converter.score.scorer import count_pass, pad_batches
    from converter.score.tokens import load_tokenizer

    folder = tiny_model_dir(tmp_path / family, byte_level_tokenizer_dir, family, **PREDICTED_CASES[family])
    source = open_source(folder)
    options = replace(ALL_WINDOWS, predict_tokens=ALL_WINDOWS.calib_tokens // 5)
    assert options.predict_stride == 5
    scores = score(source, open_corpus([corpus_files[0]]), options)
    state = count_pass(source, open_corpus([corpus_files[0]]), load_tokenizer(folder), options)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    expected = torch.zeros(scores.vocab, dtype=torch.float64)
    positions = 0
    with torch.inference_mode():
        for ids, mask in pad_batches([w for _, w in state.windows], 64, 2048):
            probs = torch.softmax(model(ids, attention_mask=mask.long()).logits.float(), dim=-1)
            pick = mask & (torch.arange(ids.shape[1]) % 5 == 4)
            expected += probs[pick].sum(dim=0, dtype=torch.float64)
            positions += int(pick.sum())
    assert scores.tokens_predicted == positions > 100
    np.testing.assert_allclose(scores.predicted, expected.numpy(), rtol=1e-4, atol=1e-7 * positions)
    assert scores.predicted.sum() == pytest.approx(positions, rel=1e-6)


def test_scores_without_predicted_counts_still_load_and_merge(tmp_path: Path, llama_dir: Path,
                                                               corpus_files: tuple[Path, Path]) -> None:
    """A file from before predicted counts existed (or scored with --predict-tokens 0) loads with
    none, ranks by the prior, and adds nothing when merged."""
    a, b = corpus_files
    base = ["score", str(llama_dir), "--device", "cpu", "--seq-len", "64", "--calib-tokens", "4096", "--no-progress"]
    assert main([*base, "--calib", str(a), "--predict-tokens", "0", "-o", str(tmp_path / "a.st")]) == 0
    assert main([*base, "--calib", str(b), "--layout-from", str(tmp_path / "a.st"), "-o", str(tmp_path / "b.st")]) == 0
    old, new = Scores.load(tmp_path / "a.st"), Scores.load(tmp_path / "b.st")
    assert old.predicted is None and old.tokens_predicted == 0
    assert new.predicted is not None and new.tokens_predicted > 0
    assert main(["merge-scores", str(tmp_path / "a.st"), str(tmp_path / "b.st"), "-o", str(tmp_path / "ab.st")]) == 0
    merged = Scores.load(tmp_path / "ab.st")
    np.testing.assert_array_equal(merged.predicted, new.predicted)
    assert merged.tokens_predicted == new.tokens_predicted
