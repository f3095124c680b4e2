"""Helpers for GGUF tests: run real llama.cpp (through llama-cpp-python) next to transformers.

llama.cpp is loaded with an f32 KV cache so that an f32 GGUF is compared in f32 end to end.
Detokenization goes through llama.cpp's own `llama_detokenize` with a large buffer: the
binding's `Llama.detokenize` silently drops any token longer than 32 bytes. Greedy decoding is
done step by step on both sides, recording the transformers top-1/top-2 margin at each step, so a
disagreement can be told apart from a near tie.
"""
from __future__ import annotations

import ctypes
import json
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from exporters.gguf.pre_tokenizer_table import QWEN2_REGEX
from converter.io.gguf_files import IMATRIX_FILE
from tests.support.tiny_tokenizers import CHAT_TEMPLATE, SPECIAL_TOKENS, corpus_lines

GGML_TYPE_F32 = 0


def load_llama(path: Path, n_ctx: int = 256, threads: int = 1, vocab_only: bool = False):
    """One thread by default: ggml's worker threads spin-wait, which on a busy 2-core machine makes
    a tiny model's decode step take 15 ms instead of 0.3 ms."""
    import llama_cpp

    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, verbose=False, n_threads=threads,
                           n_threads_batch=threads, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                           vocab_only=vocab_only)


def the_gguf(files: list[Path]) -> Path:
    found = [f for f in files if f.suffix == ".gguf" and f.name != IMATRIX_FILE]
    assert len(found) == 1, files
    return found[0]


def tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def detokenize(llm, ids: list[int]) -> bytes:
    """The bytes llama.cpp streams for `ids` (llama_token_to_piece, special tokens rendered), joined.

    A vocabulary that adds a space prefix has its first piece's leading space dropped, as
    llama.cpp's own detokenizer does; nothing else is cleaned up.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    buf = ctypes.create_string_buffer(1024)
    pieces = []
    for token in ids:
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        assert 0 <= n <= len(buf), n
        pieces.append(buf.raw[:n])
    text = b"".join(pieces)
    prefixed = llm.metadata.get("tokenizer.ggml.add_space_prefix") == "true"
    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    first_is_text = bool(ids) and llama_cpp.llama_vocab_get_attr(vocab, ids[0]) & control == 0
    return text[1:] if prefixed and first_is_text and text.startswith(b" ") else text


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@dataclass(frozen=True)
class Greedy:
    """A greedy continuation and, for the transformers side, the smallest top-1/top-2 logit margin."""

    tokens: list[int]
    min_margin: float


def hf_greedy(model, prompt: list[int], steps: int) -> Greedy:
    """transformers' generate, greedy, without stopping at EOS; margins from its scores."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=steps, min_new_tokens=0, eos_token_id=None,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), generation_config=config)
    margins = [float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.scores]
    return Greedy(out.sequences[0, len(prompt):].tolist(), min(margins))


def llama_greedy(llm, prompt: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def teacher_forced_agreement(llm, prompt: list[int], continuation: list[int]) -> int:
    """How many of the continuation's tokens llama.cpp also ranks first, given the same prefix."""
    logits = llama_logits(llm, prompt + continuation)
    predicted = logits[len(prompt) - 1: len(prompt) - 1 + len(continuation)].argmax(axis=1)
    return int((predicted == np.array(continuation)).sum())


def leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def train_qwen2_style_bpe(out_dir: Path, vocab_size: int = 2000) -> Path:
    """A tiny byte-level BPE with Qwen2's NFC normalizer and split regex (llama.cpp pre-tokenizer 'qwen2')."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=_regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 2048,
              "chat_template": CHAT_TEMPLATE,
              "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                                                 "rstrip": False, "single_word": False,
                                                                 "special": True} for t in SPECIAL_TOKENS}}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def runtime_comparable(line: str, tokenizer_dir: Path) -> bool:
    """False for text llama.cpp cannot tokenize like Hugging Face whatever the GGUF says.

    llama.cpp applies no Unicode normalizer to BPE vocabularies, so under an NFC normalizer
    (Qwen2's) a line that NFC changes tokenizes differently in llama.cpp's own conversions too.
    """
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if "NFC" in json.dumps(data.get("normalizer")):
        return unicodedata.normalize("NFC", line) == line
    return True


GEMMA_CONTROL_SYMBOLS = ["<start_of_turn>", "<end_of_turn>"]


def train_gemma_style_spm(out_dir: Path, vocab_size: int = 1500) -> Path:
    """A tiny Gemma-style SentencePiece BPE (byte fallback, no dummy prefix) saved the HF way.

    Unlike the Llama-2 style (`tiny_tokenizers.train_sentencepiece_bpe`), no space is prepended,
    which is the layout Gemma ships and the one where transformers' tokenizer.json and
    SentencePiece agree; llama.cpp always prepends where a dummy prefix is configured.
    """
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9995, split_digits=True, num_threads=1, pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=GEMMA_CONTROL_SYMBOLS, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, minloglevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
              "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    return out_dir


@contextmanager
def llama_log_lines() -> Iterator[list[str]]:
    """llama.cpp's own log lines while the block runs, whatever callback an earlier test (verify's quiet one)
    left installed in this process; llama-cpp-python's default callback afterwards."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []
    handle = llama_cpp.llama_log_callback(lambda level, text, data: lines.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(handle, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
