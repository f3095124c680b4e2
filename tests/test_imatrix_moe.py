"""llama.cpp's importance matrix for mixture-of-experts models: a row per expert in every expert stack.

A tiny Qwen2-MoE (shared expert) and Mixtral (released per-expert layouts) and a tiny Qwen3-MoE (hidden
256, transformers' stacked layout) are scored and exported through plans that cut the vocabulary, every
expert its own way and the shared expert. Every entry of imatrix.gguf, read with gguf-py and opened by
llama.cpp's own GGUF reader, equals sums that transformers hooks collect on stock modules over the same
windows: an nn.Linear's input, the router's input, and for the experts (hooked at their module's call: the
router's choices) each expert's routed hidden rows for ffn_gate_exps/ffn_up_exps and its unweighted
act_fn(gate) * up for ffn_down_exps, cut through the plan's kept channels of that expert, with the tokens
routed to each expert as counts. Layer-by-layer scoring gives the same sums; two corpus halves merged equal
one run, and a file without the expert entries still loads. q4_k_m quantises the expert stacks differently
with the matrix than without it, and llama.cpp's quantiser no longer reports expert weights it did not find.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

from converter.cli import main
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.score.corpus import open_corpus
from converter.score.matmul_inputs import MatmulSums
from converter.score.scorer import count_pass, pad_batches, score
from converter.score.scores import Scores, merge
from converter.score.tokens import load_tokenizer
from converter.source import open_source
from exporters.gguf.imatrix import ImportanceMatrix
from exporters.options import ExportOptions
from tests.support.ggml_reader import ggml_read
from tests.support.gguf_runtime import llama_log_lines
from tests.support.moe_models import moe_plan, save_moe_model
from tests.support.score_fixtures import ALL_WINDOWS, write_corpus
from tests.support.tiny_models import build_tiny_model
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, heldout_tokens=512, probe_prompts=0, probe_heldout=0, predict_tokens=0)
# llama.cpp's name for each transformers module whose input it sums (per layer), and the output projection.
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
         "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
         "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
EXPERT_STACKS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
MISSING = r"did not find weights for (\S+)"
# family: layout, model overrides, expert channels each expert drops (Mixtral: block_sparse_moe's w1/w2/w3 names)
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "qwen2_moe": ("per_expert", {}, 16),
    "mixtral": ("per_expert", {}, 16),
    "qwen3_moe": ("stacked", {"norm_topk_prob": True, "hidden_size": 256, "head_dim": 64, "moe_intermediate_size": 512},
                  256)}


@pytest.fixture(scope="module")
def corpus_files(module_tmp: ModuleTmp) -> tuple[Path, Path]:
    root = module_tmp.mktemp("moe-imatrix-corpus")
    return write_corpus(root / "a.txt", 20, 2), write_corpus(root / "b.txt", 23, 2)


@pytest.fixture(scope="module")
def models(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
           corpus_files: tuple[Path, Path]) -> dict[str, tuple[Path, Scores, PrunePlan]]:
    """Per family: the saved model, its scores on both corpus files and a plan that cuts every expert."""
    out = {}
    for family, (layout, overrides, cut) in CASES.items():
        model = build_tiny_model(family, seed=0, **overrides)
        folder = save_moe_model(model, module_tmp.mktemp(family) / "in", layout, byte_level_tokenizer_dir)
        scores = score(open_source(folder), open_corpus(list(corpus_files)), OPTIONS)
        out[family] = (folder, scores, moe_plan(model, 1200, seed=1, expert_cut=cut))
    return out


@torch.inference_mode()
def hook_reference(folder: Path, corpus_files: tuple[Path, Path]) -> tuple[dict[str, np.ndarray], int]:
    """Sums of x² over real positions from stock transformers: each hooked module's input by its module path,
    and per layer `L.experts.gate_up` / `L.experts.down` [experts, columns] and `L.experts.counts` [experts]."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    sums: dict[str, np.ndarray] = {}
    real: list[torch.Tensor] = []  # the current batch's mask, flattened

    def add(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])[real[0]].double()
        sums[name] = sums.get(name, 0) + (x * x).sum(dim=0).numpy()

    def module_hook(name: str):
        return lambda module, args: add(name, args[0])

    def experts_hook(layer: int):
        def hook(module, args, kwargs):
            hidden, index = (*args, *kwargs.values())[:2]
            keep = real[0]
            counts, gate_up, down = [], [], []
            for e in range(module.gate_up_proj.shape[0]):
                slots = (index == e) & keep[:, None]
                x = hidden[slots.any(dim=1)].double()
                gate, up = (x @ module.gate_up_proj[e].double().T).chunk(2, dim=-1)
                inner = module.act_fn(gate) * up
                counts.append(int(slots.sum()))
                gate_up.append((x * x).sum(dim=0).numpy())
                down.append((inner * inner).sum(dim=0).numpy())
            for key, value in (("counts", np.asarray(counts)), ("gate_up", np.stack(gate_up)),
                               ("down", np.stack(down))):
                sums[f"{layer}.experts.{key}"] = sums.get(f"{layer}.experts.{key}", 0) + value
        return hook

    for layer, block in enumerate(model.model.layers):
        for path, module in block.named_modules():
            if path in NAMES:
                module.register_forward_pre_hook(module_hook(f"{layer}.{path}"))
        block.mlp.experts.register_forward_pre_hook(experts_hook(layer), with_kwargs=True)
    model.lm_head.register_forward_pre_hook(module_hook("lm_head"))
    state = count_pass(open_source(folder), open_corpus(list(corpus_files)), load_tokenizer(folder), OPTIONS)
    tokens = 0
    for ids, mask in pad_batches([w for _, w in state.windows], OPTIONS.seq_len, OPTIONS.batch_tokens):
        real[:] = [mask.reshape(-1)]
        model(ids, attention_mask=mask.long())
        tokens += int(mask.sum())
    return sums, tokens


def expected_entries(reference: dict[str, np.ndarray], tokens: int, plan: PrunePlan, layers: int
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per llama.cpp name, the reference's (in_sum2 [matrices, columns], counts [matrices]) cut through the plan."""
    everything = np.asarray([tokens])
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {"output.weight": (reference["lm_head"][None], everything)}
    for layer in range(layers):
        for path, gguf in NAMES.items():
            if f"{layer}.{path}" in reference:
                rows = reference[f"{layer}.{path}"]
                if gguf == "ffn_down_shexp":
                    rows = rows[list(plan.kept_ffn_channels[layer])]
                out[f"blk.{layer}.{gguf}.weight"] = (rows[None], everything)
        counts = reference[f"{layer}.experts.counts"]
        down = np.stack([row[list(keep)] for row, keep in zip(reference[f"{layer}.experts.down"],
                                                               plan.kept_expert_channels[layer])])
        for name, rows in (("ffn_gate_exps", reference[f"{layer}.experts.gate_up"]),
                           ("ffn_up_exps", reference[f"{layer}.experts.gate_up"]), ("ffn_down_exps", down)):
            out[f"blk.{layer}.{name}.weight"] = (rows, counts)
    return out


@pytest.mark.parametrize("family", list(CASES))
def test_expert_entries_equal_transformers_hooks(models: dict[str, tuple[Path, Scores, PrunePlan]],
                                                 corpus_files: tuple[Path, Path], tmp_path: Path,
                                                 family: str) -> None:
    folder, scores, plan = models[family]
    out = tmp_path / "gguf"
    export(open_source(folder), plan, out, "gguf", ExportOptions(outtype="f32", progress=False,
                                                                 importance=scores.matmul))
    keys, ggml_tensors = ggml_read(out / "imatrix.gguf")
    assert keys["general.type"] == "imatrix" and keys["imatrix.chunk_size"] == OPTIONS.seq_len
    tensors = {t.name: t for t in GGUFReader(out / "imatrix.gguf").tensors}
    assert set(ggml_tensors) == set(tensors)
    reference, tokens = hook_reference(folder, corpus_files)
    assert tokens == scores.tokens_scored
    layers = len(plan.kept_expert_channels)
    expected = expected_entries(reference, tokens, plan, layers)
    if family == "qwen2_moe":
        shared = ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp")
        assert {f"blk.0.{n}.weight" for n in shared} <= set(expected)
    assert set(tensors) == {f"{n}.{part}" for n in expected for part in ("in_sum2", "counts")}
    model = {t.name: tuple(int(d) for d in t.shape) for t in GGUFReader(next(
        p for p in out.glob("*.gguf") if p.name != "imatrix.gguf")).tensors}  # ggml order: columns first
    for name, (rows, counts) in expected.items():
        got = np.asarray(tensors[f"{name}.in_sum2"].data, dtype=np.float64)
        got_counts = np.asarray(tensors[f"{name}.counts"].data, dtype=np.float64)
        assert got.shape == rows.shape and got_counts.shape == (len(counts), 1), name
        assert got.shape[1] == model[name][0] and got.shape[0] == (model[name][2] if len(model[name]) == 3 else 1)
        assert ggml_tensors[f"{name}.in_sum2"] == (0, 4 * rows.size)  # GGML_TYPE_F32
        assert ggml_tensors[f"{name}.counts"] == (0, 4 * len(counts))
        np.testing.assert_array_equal(got_counts[:, 0], counts, err_msg=name)
        np.testing.assert_allclose(got, rows, rtol=2e-5, atol=1e-12, err_msg=name)
    counts = expected["blk.1.ffn_down_exps.weight"][1]
    assert counts.sum() == 2 * tokens and counts.min() < counts.max()  # top-2 routing, unevenly spread
    assert scores.experts is not None and model["blk.1.ffn_down_exps.weight"][0] < scores.experts.width  # cut


def test_layerwise_and_merged_sums_equal_one_run(models: dict[str, tuple[Path, Scores, PrunePlan]],
                                                 corpus_files: tuple[Path, Path], tmp_path: Path) -> None:
    folder, whole, _ = models["qwen2_moe"]
    source = open_source(folder)
    layered = score(source, open_corpus(list(corpus_files)), replace(OPTIONS, layerwise=True))
    paths = [score(source, open_corpus([part]), OPTIONS, layout=whole.layout).save(tmp_path / f"{i}.st")
             for i, part in enumerate(corpus_files)]
    merged = merge(paths)
    reloaded = Scores.load(whole.save(tmp_path / "whole.st"))
    assert whole.matmul is not None
    experts = [k for k, v in whole.matmul.sums.items() if v.ndim == 2]
    assert len(experts) == 4 and len(whole.matmul.expert_counts) == 2
    for other in (layered, merged, reloaded):
        assert other.matmul is not None and set(other.matmul.sums) == set(whole.matmul.sums)
        for key, counts in whole.matmul.expert_counts.items():
            np.testing.assert_array_equal(other.matmul.expert_counts[key], counts)
        for key, sums in whole.matmul.sums.items():
            np.testing.assert_allclose(other.matmul.sums[key], sums, rtol=1e-5, err_msg=key)
    assert merged.experts is not None and merged.matmul is not None and np.array_equal(
        np.stack([merged.matmul.expert_counts[k] for k in sorted(merged.matmul.expert_counts)]), merged.experts.tokens)
    # A file from before the expert entries (vectors only, no counts) still loads, and exports no expert rows.
    older = MatmulSums({k: v for k, v in whole.matmul.sums.items() if v.ndim == 1}, whole.matmul.tokens,
                       whole.matmul.chunk_size, whole.matmul.datasets)
    loaded = Scores.load(replace(whole, matmul=older).save(tmp_path / "older.st"))
    assert loaded.matmul is not None and not loaded.matmul.expert_counts and set(loaded.matmul.sums) == set(older.sums)


def test_q4_k_m_weighs_the_expert_stacks(models: dict[str, tuple[Path, Scores, PrunePlan]], tmp_path: Path) -> None:
    folder, scores, plan = models["qwen3_moe"]
    options = ExportOptions(outtype="q4_k_m", progress=False, report_plots=False)
    with llama_log_lines() as lines:
        export(open_source(folder), plan, tmp_path / "with", "gguf", replace(options, importance=scores.matmul))
    log = "".join(lines)
    export(open_source(folder), plan, tmp_path / "without", "gguf", options)
    files = [next(p for p in (tmp_path / d).glob("*.gguf") if p.name != "imatrix.gguf") for d in ("with", "without")]
    with_m, without = ({t.name: t for t in GGUFReader(f).tensors} for f in files)
    assert {n: t.tensor_type for n, t in with_m.items()} == {n: t.tensor_type for n, t in without.items()}
    for layer in (0, 1):
        for stack in EXPERT_STACKS:
            name = f"blk.{layer}.{stack}.weight"
            assert with_m[name].tensor_type.name in ("Q4_K", "Q6_K"), name  # the K-quants on the 256 grid
            assert not np.array_equal(with_m[name].data, without[name].data), name
    # llama.cpp's log names every weight it has no importance for: only the embedding (which llama-imatrix
    # never collects) is left, where scores from before the expert entries leave every expert stack out.
    assert re.findall(MISSING, log) == ["token_embd.weight"] and "imatrix size" not in log
    assert scores.matmul is not None
    older = MatmulSums({k: v for k, v in scores.matmul.sums.items() if v.ndim == 1}, scores.matmul.tokens,
                       scores.matmul.chunk_size, scores.matmul.datasets)
    with llama_log_lines() as lines:
        export(open_source(folder), plan, tmp_path / "older", "gguf", replace(options, importance=older))
    missing = re.findall(MISSING, "".join(lines))
    assert sorted(missing) == sorted(["token_embd.weight", *(f"blk.{i}.{s}.weight" for i in (0, 1)
                                                             for s in EXPERT_STACKS)])


def test_two_gloo_ranks_sum_the_expert_entries_as_one(models: dict[str, tuple[Path, Scores, PrunePlan]],
                                                      corpus_files: tuple[Path, Path], tmp_path: Path) -> None:
    """`score` under torch.distributed.run with 2 CPU ranks all-reduces the per-expert rows and counts."""
    folder = models["qwen2_moe"][0]
    args = ["score", str(folder), "--device", "cpu", "--seq-len", "64", "--calib-tokens", str(1 << 20),
            "--heldout-tokens", "512", "--no-progress", "--probe-prompts", "0", "--calib", str(corpus_files[0]),
            "--calib", str(corpus_files[1])]
    assert main([*args, "-o", str(tmp_path / "one.st")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "converter.cli", *args,
           "-o", str(tmp_path / "two.st")]
    done = subprocess.run(cmd, check=False, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "(2 ranks)" in done.stdout, done.stderr[-3000:]
    one, two = (Scores.load(tmp_path / f"{n}.st").matmul for n in ("one", "two"))
    assert one is not None and two is not None and one.tokens == two.tokens > 1000
    assert set(one.expert_counts) == set(two.expert_counts) and len(one.expert_counts) == 2
    for key, counts in one.expert_counts.items():
        np.testing.assert_array_equal(two.expert_counts[key], counts)
        assert counts.sum() == 2 * one.tokens
    assert set(one.sums) == set(two.sums)
    for key, sums in one.sums.items():
        np.testing.assert_allclose(two.sums[key], sums, rtol=1e-5, err_msg=key)


def test_an_expert_without_tokens_is_weighed_evenly() -> None:
    """llama-quantize divides each expert's row by its own count and gives an expert that saw no token ones."""
    rows = np.asarray([[2.0, 4.0], [6.0, 8.0], [3.0, 9.0]], dtype=np.float32)
    matrix = ImportanceMatrix((("blk.0.ffn_down_exps.weight", rows, np.asarray([0.0, 2.0, 3.0])),), 5, 64, ("x",))
    ((name, means),) = matrix.means()
    assert name == "blk.0.ffn_down_exps.weight"
    np.testing.assert_array_equal(means, [1.0, 1.0, 3.0, 4.0, 1.0, 3.0])
