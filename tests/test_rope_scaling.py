"""Scaled RoPE carried into every runtime, checked at positions beyond the original context.

Llama 3.x (`rope_type: llama3`, which llama.cpp reads as a `rope_freqs` tensor), Qwen2.5/Qwen3's
`yarn` (frequency ramp plus an attention factor) and linear scaling change the rotary
frequencies; a runtime that drops them agrees with transformers only near position 0. Tiny
models with an original context of 16 are pruned (vocabulary + FFN) and exported as GGUF f32 and
ONNX fp32, and both must reproduce transformers' logits over a 48-token prompt (so most positions
lie beyond 16) and its greedy continuation. Each case is also checked to matter: the same model
with the scaling removed gives different logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from converter.pipeline import export
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.gguf_runtime import hf_greedy as hf_greedy_margin
from tests.support.gguf_runtime import llama_greedy, llama_logits, load_llama, the_gguf
from tests.support.onnx_runner import OnnxDecoder, greedy, hf_greedy, reference_logits
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

ORIGINAL = 16
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "llama3": ("llama", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": ORIGINAL}),
    "yarn": ("qwen2", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}),
    "linear": ("llama", {"rope_type": "linear", "factor": 2.0}),
}
PROMPT_LENGTH, STEPS = 48, 16
CONTEXT = 4 * ORIGINAL  # the scaled context yarn derives its factor from
GGUF_TOLERANCE, ONNX_TOLERANCE = 2e-5, 1e-4


def _rope(parameters: dict[str, object]) -> dict[str, object]:
    return {"rope_theta": 10000.0, **parameters}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, module_tmp: ModuleTmp,
         byte_level_tokenizer_dir: Path) -> tuple[str, Path, Path, Path, object]:
    name = request.param
    family, parameters = CASES[name]
    root = module_tmp.mktemp(f"rope-{name}")
    vocab = 1 + max(json.loads((byte_level_tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"].values())
    model = build_tiny_model(family, seed=3, vocab_size=vocab, rope_parameters=_rope(parameters),
                             max_position_embeddings=CONTEXT)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=2)
    export(open_source(src), plan, root / "hf", "hf", ExportOptions(progress=False))
    gguf = the_gguf(export(open_source(src), plan, root / "gguf", "gguf", ExportOptions(outtype="f32",
                                                                                        progress=False)))
    export(open_source(src), plan, root / "onnx", "onnx", ExportOptions(outtype="fp32", progress=False))
    return name, root / "hf", gguf, root / "onnx", cfg


def _prompt(vocab: int) -> list[int]:
    return [1, *np.random.default_rng(11).integers(3, vocab, size=PROMPT_LENGTH - 1).tolist()]


def _hf(folder: Path, **config: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **config).eval()


def test_scaling_changes_logits_beyond_the_original_context(case) -> None:
    name, hf_dir, _, _, _ = case
    model = _hf(hf_dir)
    plain = _hf(hf_dir, rope_parameters=_rope({"rope_type": "default"}))
    ids = torch.tensor([_prompt(model.config.vocab_size)])
    with torch.no_grad():
        scaled, unscaled = model(ids).logits[0], plain(ids).logits[0]
    late = float((scaled[ORIGINAL:] - unscaled[ORIGINAL:]).abs().max() / scaled.abs().max())
    assert late > 1e-2, f"{name}: removing the scaling changes the logits only by {late:.2e}; the test is blind"


def test_gguf_matches_transformers_beyond_the_original_context(case) -> None:
    name, hf_dir, gguf, _, _ = case
    model = _hf(hf_dir)
    prompt = _prompt(model.config.vocab_size)
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0].numpy()
    got = llama_logits(load_llama(gguf), prompt)
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"\n[rope {name}] gguf f32 max|dlogit|/max|logit| over {PROMPT_LENGTH} positions = {relative:.2e}")
    assert relative < GGUF_TOLERANCE, relative
    reference = hf_greedy_margin(model, prompt, STEPS)
    assert llama_greedy(load_llama(gguf), prompt, STEPS) == reference.tokens


def test_onnx_matches_transformers_beyond_the_original_context(case) -> None:
    name, hf_dir, _, onnx_dir, _ = case
    model = _hf(hf_dir)
    prompt = _prompt(model.config.vocab_size)
    ids = np.asarray([prompt], dtype=np.int64)
    mask = np.ones_like(ids)
    expected = reference_logits(model, ids, mask)[0]
    decoder = OnnxDecoder(onnx_dir)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None]
    got = decoder.step(ids, mask, positions, decoder.empty_past(1))[0][0]
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"\n[rope {name}] onnx fp32 max|dlogit|/max|logit| over {PROMPT_LENGTH} positions = {relative:.2e}")
    assert relative < ONNX_TOLERANCE, relative
    assert greedy(decoder, prompt, STEPS) == hf_greedy(model, prompt, STEPS)
