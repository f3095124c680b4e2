"""llama.cpp's importance matrix from the scoring pass: imatrix.gguf beside the GGUF, and the K-quants use it.

A tiny untied llama is scored on a small corpus, planned with a vocabulary and an FFN cut and
exported as GGUF. imatrix.gguf, read with gguf-py, has llama.cpp's keys, names and shapes, and its
columns equal sums of squared inputs that transformers forward hooks collect on every nn.Linear
over the same calibration windows, cut through the exported plan (ffn_down keeps its kept
channels). A q4_k_m export quantises differently with the matrix than without it (the tiny rows
fall back to Q5_0, which llama.cpp weighs by the matrix), and through the CLI's `--plan P --scores S`
scores with the sums write imatrix.gguf while scores without them (files from before them)
export with no imatrix.gguf and no error.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from converter.cli import main
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.report import ReportContext
from converter.score.autosplit import Budget, make_plan
from converter.score.corpus import open_corpus
from converter.score.scorer import score
from converter.score.scores import Scores
from converter.score.tokens import encode, load_tokenizer
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.ggml_reader import ggml_read
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, heldout_tokens=512, probe_prompts=0, probe_heldout=0,
                  predict_tokens=0)
# llama.cpp's name for each transformers linear of the llama family, and the output projection.
LLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def scored(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> tuple[Path, Path, Scores]:
    root = module_tmp.mktemp("imatrix")
    folder = tiny_model_dir(root / "model", byte_level_tokenizer_dir, tied=False)
    corpus = write_corpus(root / "calib.txt", 20, 3)
    return folder, corpus, score(open_source(folder), open_corpus([corpus]), OPTIONS)


@pytest.fixture(scope="module")
def exported(scored: tuple[Path, Path, Scores], module_tmp: ModuleTmp) -> Path:
    folder, _, scores = scored
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(vocab_size=900, intermediate_size=96, device="cpu"))
    out = module_tmp.mktemp("imatrix-out") / "gguf"
    export(source, plan, out, "gguf", ExportOptions(outtype="f16", progress=False, report_plots=False),
           report=ReportContext(scores, "scored now"))
    return out


@torch.inference_mode()
def hook_reference(folder: Path, corpus: Path, heldout: set[str], seq_len: int) -> tuple[dict[str, np.ndarray], int]:
    """Sums of x² of every nn.Linear's input (transformers forward hooks) over the calibration windows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def add(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
        return add

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(hook(name))
    tokenizer = load_tokenizer(folder)
    texts = [doc.text for doc in open_corpus([corpus]).documents() if doc.text not in heldout]
    tokens = 0
    for ids in encode(tokenizer, texts, model.config.vocab_size):
        for start in range(0, ids.size, seq_len):
            window = torch.from_numpy(ids[start:start + seq_len])[None]
            model(window)
            tokens += window.shape[1]
    return {k: v.numpy() for k, v in sums.items()}, tokens


def test_imatrix_matches_forward_hooks(scored: tuple[Path, Path, Scores], exported: Path) -> None:
    folder, corpus, scores = scored
    keys, ggml_tensors = ggml_read(exported / "imatrix.gguf")
    assert keys == {"general.type": "imatrix", "imatrix.datasets": [str(corpus)], "imatrix.chunk_size": OPTIONS.seq_len,
                    "imatrix.chunk_count": scores.tokens_scored // OPTIONS.seq_len}
    tensors = {t.name: t for t in GGUFReader(exported / "imatrix.gguf").tensors}
    assert set(ggml_tensors) == set(tensors)
    plan = PrunePlan.load(exported / "prune_plan.json")
    layers = len(plan.kept_ffn_channels)
    expected = {f"blk.{i}.{gguf}.weight": f"model.layers.{i}.{hf}" for i in range(layers)
                for hf, gguf in LLAMA_NAMES.items()}
    expected["output.weight"] = "lm_head"
    assert set(tensors) == {f"{n}.{part}" for n in expected for part in ("in_sum2", "counts")}

    reference, tokens = hook_reference(folder, corpus, set(scores.heldout_texts), OPTIONS.seq_len)
    assert tokens == scores.tokens_scored
    model = GGUFReader(next(p for p in exported.glob("*.gguf") if p.name != "imatrix.gguf"))
    widths = {t.name: int(t.shape[0]) for t in model.tensors}  # gguf-py shapes are ggml's: columns first
    for gguf_name, hf_name in expected.items():
        got = np.asarray(tensors[f"{gguf_name}.in_sum2"].data, dtype=np.float64)
        assert got.shape == (1, widths[gguf_name])
        assert ggml_tensors[f"{gguf_name}.in_sum2"] == (0, 4 * widths[gguf_name])  # GGML_TYPE_F32, one row
        assert ggml_tensors[f"{gguf_name}.counts"] == (0, 4)
        assert float(np.asarray(tensors[f"{gguf_name}.counts"].data).reshape(-1)[0]) == tokens
        want = reference[hf_name]
        if gguf_name.endswith("ffn_down.weight"):
            want = want[list(plan.kept_ffn_channels[int(gguf_name.split(".")[1])])]
        np.testing.assert_allclose(got[0], want, rtol=2e-5, err_msg=gguf_name)
    assert widths["blk.0.ffn_down.weight"] < scores.ffn  # the cut is real: columns were dropped


def test_q4_k_m_uses_the_matrix(scored: tuple[Path, Path, Scores], tmp_path: Path) -> None:
    folder, _, scores = scored
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(vocab_size=900, intermediate_size=96, device="cpu"))
    options = ExportOptions(outtype="q4_k_m", progress=False, report_plots=False)
    export(source, plan, tmp_path / "with", "gguf", replace(options, importance=scores.matmul))
    export(source, plan, tmp_path / "without", "gguf", options)
    assert not (tmp_path / "without" / "imatrix.gguf").exists()
    files = [next(p for p in (tmp_path / d).glob("*.gguf") if p.name != "imatrix.gguf") for d in ("with", "without")]
    readers = [GGUFReader(f) for f in files]
    with_m, without = ({t.name: t for t in r.tensors} for r in readers)
    assert {n: t.tensor_type for n, t in with_m.items()} == {n: t.tensor_type for n, t in without.items()}
    changed = [n for n in with_m if with_m[n].tensor_type.name in ("Q5_0", "Q4_0")
               and not np.array_equal(with_m[n].data, without[n].data)]
    assert any(n.endswith("ffn_down.weight") for n in changed) and any(n.endswith("attn_q.weight") for n in changed)
    keys = {f.name: f for f in readers[0].fields.values()}
    assert bytes(keys["quantize.imatrix.file"].parts[-1]).decode() == "imatrix.gguf"
    entries = [t for t in GGUFReader(tmp_path / "with" / "imatrix.gguf").tensors if t.name.endswith(".in_sum2")]
    assert int(keys["quantize.imatrix.entries_count"].parts[-1][0]) == len(entries)


def test_scores_without_sums_export_no_matrix(scored: tuple[Path, Path, Scores], tmp_path: Path) -> None:
    folder, _, scores = scored
    saved = scores.save(tmp_path / "scores.safetensors")
    loaded = Scores.load(saved)
    assert loaded.matmul is not None and scores.matmul is not None
    assert loaded.matmul.tokens == scores.matmul.tokens
    assert all(np.array_equal(loaded.matmul.sums[k], v) for k, v in scores.matmul.sums.items())
    older = replace(scores, matmul=None).save(tmp_path / "older.safetensors")
    assert Scores.load(older).matmul is None
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(vocab_size=900, intermediate_size=96, device="cpu"))
    plan_file = plan.save(tmp_path / "plan.json")
    for scores_file, label in ((saved, "new"), (older, "older")):
        out = tmp_path / label
        assert main([str(folder), str(out), "--format", "gguf", "--plan", str(plan_file), "--scores", str(scores_file),
                     "--outtype", "f16", "--no-report", "--no-progress"]) == 0
        assert any(out.glob("*.gguf")) and (out / "imatrix.gguf").exists() == (label == "new")
