"""Per-expert scoring of mixture-of-experts models (issue 23, step 2).

Tiny Qwen3-MoE, Qwen2-MoE (shared expert with its sigmoid gate), Mixtral and OLMoE models from
transformers' own config classes are scored, and each expert's bucketed act² over its routed tokens
(weighted by the router weight) is checked against a reference built from stock transformers: the
router's choices and weights are captured by a hook on its `gate`, and the experts' channels are
recomputed from the checkpoint's per-expert tensors; routed-token counts and router mass equal the
router's choices. Layer-by-layer scoring equals whole-model scoring, two corpus halves merged equal
one run, an expert that the router never chooses scores exactly zero, and the pure helpers (channel
choice per expert, the expert-use table) are checked on small arrays. The models are opened with
open_source on their family records (converter/arch/families.py), as the commands open them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.activations import ACT2FN

from converter.score.corpus import open_corpus
from converter.score.expert_channels import expert_channel_scores, keep_expert_channels
from converter.score.expert_use import expert_use_table
from converter.score.scorer import count_pass, pad_batches, score
from converter.score.scores import Scores, merge
from converter.score.tokens import load_tokenizer
from converter.source import Source, open_source
from tests.support.moe_models import unrouted_expert_model
from tests.support.score_fixtures import ALL_WINDOWS, tiny_model_dir, write_corpus
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, probe_prompts=0, probe_heldout=0, predict_tokens=0)
MOE: dict[str, dict[str, object]] = {
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_topk_prob": True},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 48},
    "olmoe": {"num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32},
}
# Checkpoint names of an expert's gate and up rows: {layer}, {expert}.
GATE_UP = {"mixtral": ("model.layers.{}.block_sparse_moe.experts.{}.w1.weight",
                       "model.layers.{}.block_sparse_moe.experts.{}.w3.weight")}
GATE_UP_DEFAULT = ("model.layers.{}.mlp.experts.{}.gate_proj.weight", "model.layers.{}.mlp.experts.{}.up_proj.weight")


def moe_source(folder: Path) -> Source:
    """The scorer's view of an MoE folder, through its family record (the dense FFN is the shared expert)."""
    return open_source(folder)


@pytest.fixture(scope="module")
def corpus_files(module_tmp: ModuleTmp) -> tuple[Path, Path]:
    root = module_tmp.mktemp("moe-corpus")
    return write_corpus(root / "a.txt", 20, 3), write_corpus(root / "b.txt", 23, 3)


@pytest.fixture(scope="module")
def scored(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path,
           corpus_files: tuple[Path, Path]) -> dict[str, tuple[Path, Scores, Scores]]:
    """Per family: the model folder, its whole-model scores and its layer-by-layer scores on both files."""
    out = {}
    corpus = open_corpus(list(corpus_files))
    for family, overrides in MOE.items():
        folder = tiny_model_dir(module_tmp.mktemp(family), byte_level_tokenizer_dir, family, **overrides)
        source = moe_source(folder)
        out[family] = (folder, score(source, corpus, OPTIONS), score(source, corpus, replace(OPTIONS, layerwise=True)))
    return out


@torch.inference_mode()
def reference(folder: Path, corpus_files: tuple[Path, Path], layout_bucket: np.ndarray) -> dict[str, np.ndarray]:
    """Per-expert sums from stock transformers: router choices hooked, channels from per-expert tensors."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    config = model.config
    layers = config.num_hidden_layers
    experts = model.model.layers[0].mlp.experts.num_experts
    act = ACT2FN[config.hidden_act]
    gate_up = GATE_UP.get(config.model_type, GATE_UP_DEFAULT)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        weights = [[[f.get_tensor(name.format(layer, e)) for name in gate_up] for e in range(experts)]
                   for layer in range(layers)]
    width = weights[0][0][0].shape[0]
    buckets = int(layout_bucket.max()) + 1
    sums = np.zeros((layers, experts, buckets, width))
    tokens = np.zeros((layers, experts), dtype=np.int64)
    gate_mass = np.zeros((layers, experts))
    shared = np.zeros((layers, buckets, config.shared_expert_intermediate_size)) \
        if hasattr(config, "shared_expert_intermediate_size") else None
    seen: dict[str, object] = {}

    def router_hook(layer: int):
        def hook(module, args, output):
            seen[f"router{layer}"] = (args[0], output[1], output[2])
        return hook

    def shared_hook(layer: int):
        def hook(module, args):
            seen[f"shared{layer}"] = args[0]
        return hook

    for layer, block in enumerate(model.model.layers):
        block.mlp.gate.register_forward_hook(router_hook(layer))
        if shared is not None:
            block.mlp.shared_expert.down_proj.register_forward_pre_hook(shared_hook(layer))
    tok = load_tokenizer(folder)
    state = count_pass(moe_source(folder), open_corpus(list(corpus_files)), tok, OPTIONS)
    for ids, mask in pad_batches([w for _, w in state.windows], OPTIONS.seq_len, OPTIONS.batch_tokens):
        model(ids, attention_mask=mask.long())
        real = mask.reshape(-1).numpy()
        bucket = layout_bucket[ids.reshape(-1).numpy()]
        for layer in range(layers):
            hidden, top_w, top_i = seen[f"router{layer}"]
            for e in range(experts):
                slot = (top_i == e).numpy() & real[:, None]
                rows = slot.any(axis=1)
                tokens[layer, e] += int(slot.sum())
                w = (top_w.numpy() * slot).sum(axis=1)[rows]
                gate_mass[layer, e] += float(w.sum())
                x = hidden[torch.from_numpy(rows)]
                a = (act(x @ weights[layer][e][0].T) * (x @ weights[layer][e][1].T)).double().numpy()
                np.add.at(sums[layer, e], bucket[rows], a * a * w[:, None])
            if shared is not None:
                s = seen[f"shared{layer}"].reshape(-1, shared.shape[2]).double().numpy()
                np.add.at(shared[layer], bucket[real], (s * s)[real])
    return {"importance": sums, "tokens": tokens, "gate": gate_mass, "shared": shared}


@pytest.mark.parametrize("family", list(MOE))
def test_expert_scores_equal_stock_transformers(scored: dict[str, tuple[Path, Scores, Scores]],
                                                corpus_files: tuple[Path, Path], family: str) -> None:
    folder, whole, layered = scored[family]
    ref = reference(folder, corpus_files, whole.layout.token_bucket)
    got = whole.experts
    assert got is not None and got.importance.shape == ref["importance"].shape
    # Every real position is routed to top_k=2 experts in each of the 2 layers.
    assert whole.tokens_scored > 1000 and got.tokens.sum() == 2 * 2 * whole.tokens_scored
    np.testing.assert_array_equal(got.tokens, ref["tokens"])
    np.testing.assert_allclose(got.gate, ref["gate"], rtol=1e-5)
    top = float(ref["importance"].max())
    assert top > 0 and np.count_nonzero(got.importance.sum(axis=(0, 1, 3))) > 10
    np.testing.assert_allclose(got.importance, ref["importance"], rtol=1e-5, atol=1e-9 * top)
    if ref["shared"] is not None:  # Qwen2-MoE: the shared expert is the layer's dense FFN, ungated
        np.testing.assert_allclose(whole.importance, ref["shared"], rtol=1e-5, atol=1e-9 * float(ref["shared"].max()))
    else:
        assert not whole.importance.any()
    # Layer by layer equals whole model.
    assert layered.experts is not None
    np.testing.assert_array_equal(layered.experts.tokens, got.tokens)
    np.testing.assert_allclose(layered.experts.gate, got.gate, rtol=1e-6)
    np.testing.assert_allclose(layered.experts.importance, got.importance, rtol=1e-5, atol=1e-9 * top)
    np.testing.assert_allclose(layered.importance, whole.importance, rtol=1e-5, atol=1e-9)


def test_norm_topk_prob_weights_sum_to_one_per_position(scored: dict[str, tuple[Path, Scores, Scores]]) -> None:
    """With norm_topk_prob (Qwen3-MoE here, Mixtral always) each position's two router weights sum to 1."""
    for family in ("qwen3_moe", "mixtral"):
        _, whole, _ = scored[family]
        assert whole.experts is not None
        np.testing.assert_allclose(whole.experts.gate.sum(axis=1), whole.tokens_scored, rtol=1e-5)
    _, qwen2, _ = scored["qwen2_moe"]
    assert qwen2.experts is not None and (qwen2.experts.gate.sum(axis=1) < 0.99 * qwen2.tokens_scored).all()


def test_merged_halves_equal_one_run(tmp_path: Path, scored: dict[str, tuple[Path, Scores, Scores]],
                                     corpus_files: tuple[Path, Path]) -> None:
    folder, whole, _ = scored["qwen3_moe"]
    source = moe_source(folder)
    paths = []
    for index, part in enumerate(corpus_files):
        paths.append(score(source, open_corpus([part]), OPTIONS, layout=whole.layout).save(tmp_path / f"{index}.st"))
    half = Scores.load(paths[0])
    merged = merge(paths)
    assert half.experts is not None and merged.experts is not None and whole.experts is not None
    assert 0 < half.experts.tokens.sum() < whole.experts.tokens.sum()
    np.testing.assert_array_equal(merged.experts.tokens, whole.experts.tokens)
    # Batches are padded differently in a half and in the whole run: float32 rounding, hence rtol 1e-5.
    np.testing.assert_allclose(merged.experts.gate, whole.experts.gate, rtol=1e-5)
    top = float(whole.experts.importance.max())
    np.testing.assert_allclose(merged.experts.importance, whole.experts.importance, rtol=1e-5, atol=1e-9 * top)
    # A file without expert sums (scored with --counts-only, or before they existed) adds nothing.
    counts_only = score(source, open_corpus([corpus_files[0]]), replace(OPTIONS, counts_only=True),
                        layout=whole.layout)
    assert counts_only.experts is None
    again = merge([counts_only.save(tmp_path / "counts.st"), paths[1]])
    assert again.experts is not None
    np.testing.assert_array_equal(again.experts.tokens, Scores.load(paths[1]).experts.tokens)


def test_an_expert_the_router_never_chooses_scores_zero(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                                        corpus_files: tuple[Path, Path],
                                                        scored: dict[str, tuple[Path, Scores, Scores]]) -> None:
    """Hidden channel 0 of layer 0's router input is made positive for every token (embedding column 0 a
    constant, no attention output into it, norm weight 1) and the router weighs it -50 for expert 3, so
    expert 3's logit is far below every other's and it is never in the top 2 of layer 0."""
    folder = unrouted_expert_model(tmp_path / "m", byte_level_tokenizer_dir, **MOE["qwen3_moe"])
    got = score(moe_source(folder), open_corpus(list(corpus_files)), OPTIONS)
    ref = reference(folder, corpus_files, got.layout.token_bucket)
    assert got.experts is not None
    assert got.experts.tokens[0, 3] == ref["tokens"][0, 3] == 0 and got.experts.gate[0, 3] == 0
    assert not got.experts.importance[0, 3].any()
    # The same model unchanged routes to expert 3 in layer 0; here its share went to the others.
    _, unchanged, _ = scored["qwen3_moe"]
    assert unchanged.experts is not None and unchanged.experts.tokens[0, 3] > 100
    assert got.experts.tokens[0].sum() == 2 * got.tokens_scored and got.experts.importance[0].sum() > 0
    np.testing.assert_array_equal(got.experts.tokens, ref["tokens"])
    unused = [(r.layer, r.expert) for r in expert_use_table(got.experts.tokens) if r.unused]
    assert (0, 3) in unused and all(got.experts.tokens[key] == 0 for key in unused)


def test_keep_expert_channels_takes_each_experts_top_width() -> None:
    importance = np.array([[[0.5, 3.0, 1.0, 3.0], [9.0, 0.0, 0.0, 8.0]],
                           [[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    assert keep_expert_channels(importance, 2) == (((1, 3), (0, 3)), ((0, 1), (2, 3)))
    assert keep_expert_channels(importance, 4)[0][0] == (0, 1, 2, 3)
    rng = np.random.default_rng(0)
    big = rng.random((3, 5, 40))
    kept = keep_expert_channels(big, 7)
    for layer in range(3):
        for expert in range(5):
            chosen = np.asarray(kept[layer][expert])
            assert list(chosen) == sorted(chosen) and len(chosen) == 7
            assert big[layer, expert, chosen].min() >= np.delete(big[layer, expert], chosen).max()


def test_expert_channel_scores_weigh_buckets_by_the_kept_vocabulary(
        scored: dict[str, tuple[Path, Scores, Scores]]) -> None:
    _, whole, _ = scored["olmoe"]
    assert whole.experts is not None
    every = expert_channel_scores(whole.experts, whole.layout, whole.counts, None)
    np.testing.assert_allclose(every, whole.experts.importance.sum(axis=2), rtol=1e-12)
    common = np.argsort(-whole.counts, kind="stable")[:50]
    narrow = expert_channel_scores(whole.experts, whole.layout, whole.counts, common.tolist())
    assert (narrow <= every * (1 + 1e-12)).all() and narrow.sum() < every.sum()


def test_expert_use_table_rows() -> None:
    tokens = np.array([[6, 0, 2, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    rows = expert_use_table(tokens)
    assert [(r.layer, r.expert, r.tokens) for r in rows] == [
        (0, 0, 6), (0, 1, 0), (0, 2, 2), (0, 3, 0), (2, 0, 1), (2, 1, 1), (2, 2, 1), (2, 3, 1)]
    assert [r.share for r in rows[:4]] == [0.75, 0.0, 0.25, 0.0]
    assert [r.load for r in rows[:4]] == [3.0, 0.0, 1.0, 0.0] and all(r.load == 1.0 for r in rows[4:])
    assert [r.unused for r in rows[:4]] == [False, True, False, True]


def test_dense_models_store_no_expert_sums(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                           corpus_files: tuple[Path, Path]) -> None:
    from converter.source import open_source

    folder = tiny_model_dir(tmp_path / "llama", byte_level_tokenizer_dir, "llama")
    dense = score(open_source(folder), open_corpus([corpus_files[0]]), OPTIONS)
    assert dense.tokens_scored > 500 and dense.importance.sum() > 0 and dense.experts is None
    path = dense.save(tmp_path / "dense.st")
    with safe_open(str(path), framework="numpy") as f:
        assert not [n for n in f.keys() if n.startswith("expert_")]
    assert Scores.load(path).experts is None
