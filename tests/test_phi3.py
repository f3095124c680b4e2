"""Phi-3's special parts beyond the shared family tests: the fused FFN in scoring and planning, and LongRoPE.

(a) A "k*dim" axis is cut as k blocks with the same kept indices (gate_up_proj's gate and up
halves). (b) Scoring a tiny Phi-3 (fused gate_up_proj, partial rotary, LongRoPE) layer by layer
equals scoring it whole, weight magnitudes equal norms taken from the unfused halves here, the
predicted parameter count equals the exported one, and the scorer's simulated cut (dropped
channels zeroed at down_proj's input), with and without the least-squares refit, gives the bits
per byte of the exported pruned model. (c) LongRoPE past the original context (256 of 1024):
the ONNX graph's cached decode that crosses position 256 equals transformers' cached decode
(short factors before, long after, past keys kept), and llama.cpp with a context above 256 uses
the long factors, as transformers does for a longer prompt.
(d) `verify` passes on all three exports: its windows stay within the original context, where
llama.cpp (which picks the factors by its context size) and transformers both use the short ones.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from converter.arch.spec import TensorSlot
from converter.cli import main
from converter.pipeline import export
from converter.prune import PrunedCheckpoint
from converter.report.components import params_by_component
from converter.score.autosplit import Budget, SplitEvaluator, make_plan
from converter.score.bpb import text_bytes
from converter.score.corpus import open_corpus
from converter.score.scorer import score
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.gguf_runtime import llama_logits, load_llama, the_gguf
from tests.support.onnx_runner import OnnxDecoder, positions_from_mask, teacher_forced
from tests.support.reference_prune import random_plan
from tests.support.score_fixtures import ALL_WINDOWS, folder_params, hf_bits, tiny_model_dir, write_corpus
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

OPTIONS = replace(ALL_WINDOWS, calib_tokens=4096, heldout_tokens=1024, gram=True)
ORIGINAL = 256  # tiny_config's phi3: original context 256 of 1024


def test_an_axis_of_k_blocks_is_cut_in_each_block() -> None:
    gate_up = TensorSlot("w", "ffn_gate_up", ("2*ffn", "hidden"), 0, True)
    assert gate_up.cut("ffn") == (0, 2) and gate_up.axis("ffn") == 0
    assert TensorSlot("w", "ffn_down", ("hidden", "ffn"), 0, True).cut("ffn") == (1, 1)
    assert TensorSlot("w", "attn_qkv", ("q_dim+2*kv_dim", "hidden"), 0, True).cut("ffn") is None


def test_the_fused_tensors_count_as_ffn_and_attention(tmp_path: Path) -> None:
    src = save_tiny_model(build_tiny_model("phi3"), tmp_path / "in")
    source = open_source(src)
    plan = random_plan(2000, 160, 2, None, 96, seed=1)
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, plan)
    gate_up = next(p for p in pruned.planned() if p.name == "model.layers.1.mlp.gate_up_proj.weight")
    kept = plan.kept_ffn_channels[1]
    assert gate_up.keep == (*kept, *(160 + c for c in kept)) and gate_up.shape == (192, 64)
    counts = params_by_component(pruned)
    # per layer: gate_up 2*ffn*64 + down 64*ffn; qkv (64+2*32)*64 + o 64*64
    assert counts["before"]["ffn"] == 2 * 3 * 160 * 64 and counts["after"]["ffn"] == 2 * 3 * 96 * 64
    assert counts["before"]["attention"] == counts["after"]["attention"] == 2 * (128 + 64) * 64


@pytest.fixture(scope="module")
def scored(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path):
    root = module_tmp.mktemp("phi3-score")
    folder = tiny_model_dir(root / "model", byte_level_tokenizer_dir, "phi3")
    corpus = open_corpus([write_corpus(root / "calib.txt", 10, 12)])
    whole = score(open_source(folder), corpus, OPTIONS)
    layered = score(open_source(folder), corpus, replace(OPTIONS, layerwise=True))
    return folder, whole, layered


def test_layer_by_layer_scores_equal_whole_model_scores(scored) -> None:
    _, whole, layered = scored
    assert whole.tokens_scored > 500 and np.count_nonzero(whole.act2) == whole.act2.size
    np.testing.assert_allclose(whole.importance, layered.importance, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(whole.gram, layered.gram, rtol=1e-4, atol=1e-6 * float(np.abs(whole.gram).max()))


def test_magnitude_adds_both_halves_of_gate_up(scored) -> None:
    folder, whole, _ = scored
    state = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).state_dict()
    for layer in range(whole.magnitude.shape[0]):
        gate, up = state[f"model.layers.{layer}.mlp.gate_up_proj.weight"].chunk(2)
        down = state[f"model.layers.{layer}.mlp.down_proj.weight"]
        expected = (gate.square().sum(1) + up.square().sum(1) + down.square().sum(0)).sqrt().float().numpy()
        np.testing.assert_allclose(whole.magnitude[layer], expected, rtol=1e-6)


@pytest.mark.parametrize("refit", [False, True], ids=["cut", "refit"])
def test_simulated_cut_equals_the_exported_model(tmp_path: Path, scored, refit: bool) -> None:
    folder, scores, _ = scored
    source = open_source(folder)
    plan = make_plan(source, scores, Budget(vocab_size=1200, intermediate_size=96, device="cpu", refit=refit))
    assert (plan.refit is not None) == refit
    evaluator = SplitEvaluator(source, scores, Budget(device="cpu", eval_seq_len=128, refit=refit))
    simulated = evaluator.bits_per_byte(plan)
    export(source, plan, tmp_path / "out", "hf")
    assert folder_params(tmp_path / "out") == plan.metadata["params_after_predicted"]
    texts = scores.heldout_texts
    exported = hf_bits(tmp_path / "out", texts, 128) / text_bytes(texts)
    dense = hf_bits(folder, texts, 128) / text_bytes(texts)
    assert simulated == pytest.approx(exported, rel=1e-5)
    assert abs(simulated - dense) > 1e-3


@pytest.fixture(scope="module")
def exported(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path):
    """The tiny Phi-3 (original context 256), pruned and exported as HF, ONNX and GGUF."""
    root = module_tmp.mktemp("phi3-longrope")
    model = build_tiny_model("phi3", seed=2)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=1)
    for fmt, options in (("hf", ExportOptions(progress=False)), ("onnx", ExportOptions(outtype="fp32", progress=False)),
                         ("gguf", ExportOptions(outtype="f32", progress=False))):
        export(open_source(src), plan, root / fmt, fmt, options)
    reference = AutoModelForCausalLM.from_pretrained(root / "hf", dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    return root, reference


def _hf_cached(model, ids: np.ndarray, mask: np.ndarray, prefill: int) -> np.ndarray:
    """transformers' logits for a prefill of `prefill` tokens, then one token per step with its cache."""
    positions = torch.from_numpy(positions_from_mask(mask))
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    outs = []
    with torch.no_grad():
        out = model(input_ids=ids_t[:, :prefill], attention_mask=mask_t[:, :prefill],
                    position_ids=positions[:, :prefill], use_cache=True)
        outs.append(out.logits)
        for t in range(prefill, ids.shape[1]):
            out = model(input_ids=ids_t[:, t:t + 1], attention_mask=mask_t[:, :t + 1],
                        position_ids=positions[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            outs.append(out.logits)
    return torch.cat(outs, dim=1).numpy()


@pytest.mark.parametrize("prefill", [ORIGINAL - 8, ORIGINAL + 4], ids=["crossing-in-decode", "long-prefill"])
def test_onnx_longrope_switch_matches_transformers(exported, prefill: int) -> None:
    root, reference = exported
    rng = np.random.default_rng(7)
    ids = rng.integers(3, reference.config.vocab_size, size=(2, ORIGINAL + 16))
    mask = np.ones_like(ids)
    expected = _hf_cached(reference, ids, mask, prefill)
    got = teacher_forced(OnnxDecoder(root / "onnx"), ids, mask, prefill)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale <= 1e-4
    if prefill < ORIGINAL:
        # The switch is live: the same positions computed in one long call (long factors throughout) differ.
        with torch.no_grad():
            whole = reference(input_ids=torch.from_numpy(ids)).logits.numpy()
        assert np.abs(whole[:, prefill:ORIGINAL] - expected[:, prefill:ORIGINAL]).max() / scale > 1e-2


def test_gguf_uses_long_factors_beyond_the_original_context(exported) -> None:
    root, reference = exported
    tok = AutoTokenizer.from_pretrained(root / "hf")
    prompt = tok.encode("def area(radius):\n    return 3.14159 * radius ** 2  # the circle's area\n" * 12)
    assert ORIGINAL < len(prompt) <= 512
    with torch.no_grad():
        expected = reference(torch.tensor([prompt])).logits[0].numpy()
    got = llama_logits(load_llama(the_gguf(list((root / "gguf").iterdir())), n_ctx=512), prompt)
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 2e-5


@pytest.mark.parametrize("fmt", ["hf", "gguf", "onnx"])
def test_verify_passes_within_the_original_context(exported, capsys: pytest.CaptureFixture[str],
                                                   fmt: str) -> None:
    root, _ = exported
    text = root / "text.txt"
    text.write_text("The module defines a class.\n" * 20 + "x = [1, 2, 3]\n", encoding="utf-8")
    code = main(["verify", str(root / fmt), "--reference", str(root / "in"), "--text", str(text), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert next(line for line in out.splitlines() if line.startswith("logit parity")).endswith("PASS")
