"""llama.cpp (through the llama-cpp-python binding) as verify's runtime for GGUF outputs.

Tokenization loads the file with vocab_only, so it is llama.cpp's tokenizer built from the GGUF
metadata alone (tokens, merges or scores, token types, pre-tokenizer name), exactly what a user
of the file gets. Logits come from a full load with logits_all and an f32 KV cache, so an f32
GGUF is compared in f32 end to end.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError

GGML_TYPE_F32 = 0
LLAMA_EXTRA = "pip install 'compact-convert[llama]'"


_QUIET: list[Any] = []


def _silence(llama_cpp: Any) -> None:
    """Route llama.cpp's own log lines (context-size warnings and the like) nowhere; the table says it all."""
    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, data: None))
        llama_cpp.llama_log_set(_QUIET[0], ctypes.c_void_p(0))


def _llama(path: Path, n_ctx: int, threads: int, vocab_only: bool) -> Any:
    try:
        import llama_cpp
    except ModuleNotFoundError:
        raise ConvertError(f"verifying a GGUF needs llama.cpp's Python binding; {LLAMA_EXTRA}", path) from None
    _silence(llama_cpp)
    try:
        return llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_batch=min(512, n_ctx), verbose=False,
                               n_threads=threads, n_threads_batch=threads, type_k=GGML_TYPE_F32,
                               type_v=GGML_TYPE_F32, vocab_only=vocab_only)
    except ValueError as exc:
        raise ConvertError(f"does not load in llama.cpp ({exc})", path) from None


class LlamaCppTokenizer:
    """llama.cpp's tokenizer from the GGUF metadata; no BOS added, special-token text not parsed."""

    def __init__(self, path: Path) -> None:
        self.llm = _llama(path, 64, 1, vocab_only=True)
        self.name = "llama.cpp (GGUF metadata)"

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


class LlamaCppModel:
    """A full llama.cpp context with every position's logits."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        self.llm = _llama(path, n_ctx, max(1, threads), vocab_only=False)
        self.name = "llama.cpp"
        self.vocab_size = int(self.llm.n_vocab())
        self.n_ctx = n_ctx

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)
