"""GGUF export of tiny random models of every family, checked against real llama.cpp.

Each family gets a real trained tokenizer of its kind (byte-level BPE with the GPT-2 or the Qwen2
split, or Gemma-style SentencePiece BPE with byte fallback) and is pruned by an FFN plan and by a
vocabulary + FFN plan. With --outtype f32, llama.cpp must tokenize the varied corpus exactly as
the pruned Hugging Face tokenizer does (and detokenize it back), reproduce the pruned model's
logits, and greedy-decode the same 32 tokens as transformers' generate. f16 and q8_0 are
decoded too and their agreement printed (run with -s to see it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from converter.pipeline import export
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.gguf_runtime import (
    detokenize,
    hf_greedy,
    leading_agreement,
    llama_greedy,
    llama_logits,
    load_llama,
    runtime_comparable,
    teacher_forced_agreement,
    the_gguf,
    tokenize,
    train_gemma_style_spm,
    train_qwen2_style_bpe,
)
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import FAMILIES, build_tiny_model, save_tiny_model
from tests.support.tiny_tokenizers import train_byte_level_bpe
from tools.make_varied_corpus import read_corpus
from tests.support.scratch import ModuleTmp

TOKENIZER_OF = {"llama": "gpt2", "mistral": "gpt2", "qwen2": "qwen2", "qwen3": "qwen2", "gemma": "gemma",
                "phi3": "gpt2",
                "gemma2": "gemma", "gemma3_text": "gemma", "olmo2": "gpt2", "smollm3": "gpt2", "granite": "gpt2"}
OVERRIDES: dict[str, dict[str, object]] = {
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]},
}
# ggml's CPU GELU reads an fp16 lookup table, so the Gemma families carry ~1e-4 relative error.
LOGIT_TOLERANCE = {"gpt2": 2e-5, "qwen2": 2e-5, "gemma": 2e-3}
# Every family with a vocabulary + FFN plan; the keep-all-tokens path once per tokenizer kind.
CASES = [(family, "vocab+ffn") for family in FAMILIES] + [(f, "ffn") for f in ("llama", "qwen2", "gemma3_text")]
PROMPT = "def area(radius):\n    return 3.14159 * radius ** 2  # the circle's area, in square units"
STEPS = 32


@pytest.fixture(scope="module")
def tokenizer_dirs(module_tmp: ModuleTmp) -> dict[str, Path]:
    root = module_tmp.mktemp("gguf-tokenizers")
    return {"gpt2": train_byte_level_bpe(root / "gpt2", 2000), "qwen2": train_qwen2_style_bpe(root / "qwen2", 2000),
            "gemma": train_gemma_style_spm(root / "gemma", 1500)}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_corpus()


def _vocab_size(tokenizer_dir: Path) -> int:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return 1 + max([*data["model"]["vocab"].values(), *(a["id"] for a in data["added_tokens"])])


def _plan(kind: str, config) -> object:
    keep = None if kind == "ffn" else int(config.vocab_size * 0.6)
    return random_plan(config.vocab_size, config.intermediate_size, config.num_hidden_layers, keep, 96, seed=1)


def _export_pair(tmp_path: Path, family: str, plan_kind: str, tokenizer_dir: Path, outtypes: list[str]):
    model = build_tiny_model(family, seed=0, vocab_size=_vocab_size(tokenizer_dir), **OVERRIDES.get(family, {}))
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=tokenizer_dir)
    plan = _plan(plan_kind, model.config)
    export(open_source(src), plan, tmp_path / "hf", "hf", ExportOptions(progress=False))
    ggufs = {t: the_gguf(export(open_source(src), plan, tmp_path / t, "gguf",
                                ExportOptions(outtype=t, progress=False))) for t in outtypes}
    return tmp_path / "hf", ggufs


@pytest.mark.parametrize("family,plan_kind", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_tiny_f32_matches_transformers(tmp_path: Path, family: str, plan_kind: str,
                                       tokenizer_dirs: dict[str, Path], corpus: list[str]) -> None:
    kind = TOKENIZER_OF[family]
    outtypes = ["f32", "f16", "q8_0"] if plan_kind == "vocab+ffn" else ["f32"]
    hf_dir, ggufs = _export_pair(tmp_path, family, plan_kind, tokenizer_dirs[kind], outtypes)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = load_llama(ggufs["f32"])
    assert llm.n_vocab() == model.config.vocab_size

    lines = [line for line in corpus if runtime_comparable(line, hf_dir)]
    assert len(lines) >= len(corpus) - 5
    expected_ids = tok(lines, add_special_tokens=False)["input_ids"]
    mismatched = [line for line, ids in zip(lines, expected_ids) if tokenize(llm, line) != ids]
    assert not mismatched, f"{len(mismatched)}/{len(lines)} lines tokenize differently, first: {mismatched[0]!r}"
    unround = [line for line in corpus if detokenize(llm, tokenize(llm, line)) != line.encode("utf-8")]
    assert not unround, f"{len(unround)} lines do not detokenize back, first: {unround[0]!r}"

    prompt = tok.encode(PROMPT, add_special_tokens=True)
    assert len(prompt) > 8, "the prompt must be longer than the tiny sliding window"
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0].numpy()
    got = llama_logits(llm, prompt)
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert relative < LOGIT_TOLERANCE[kind], relative

    reference = hf_greedy(model, prompt, STEPS)
    generated = llama_greedy(llm, prompt, STEPS)
    assert generated == reference.tokens, (f"greedy differs after {leading_agreement(generated, reference.tokens)} "
                                           f"tokens; smallest transformers top-2 margin {reference.min_margin:.3g}")
    print(f"\n[gguf tiny] {family} {plan_kind}: tokenization {len(lines)}/{len(lines)} lines "
          f"({len(corpus) - len(lines)} not NFC-stable skipped), f32 max|dlogit|/max|logit| = {relative:.2e}, "
          "greedy 32/32, "
          f"min top-2 margin {reference.min_margin:.3g}")
    for outtype in outtypes[1:]:
        quantized = load_llama(ggufs[outtype])
        lead = leading_agreement(llama_greedy(quantized, prompt, STEPS), reference.tokens)
        forced = teacher_forced_agreement(quantized, prompt, reference.tokens)
        print(f"[gguf tiny] {family} {plan_kind}: {outtype} greedy identical for {lead}/{STEPS} tokens, "
              f"teacher-forced top-1 agreement {forced}/{STEPS}")
        assert forced >= STEPS // 2, (outtype, forced)
