"""A model folder's tokenizer, parsed and cross-checked once for planning and writing."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from converter.tokenizer.bpe_json import BpeModel, read_bpe
from converter.tokenizer.sentencepiece_model import SentencePieceModel, check_agrees, read_sentencepiece
from converter.tokenizer.source import (ADDED_TOKENS, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_JSON,
                                        TokenizerSource, read_source)
from converter.tokenizer.tokenizer_config import check_added_tokens, check_config
from converter.tokenizer.vocabulary import Vocabulary, read_vocabulary


@dataclass(frozen=True)
class ParsedTokenizer:
    """tokenizer.json's BPE model and id table, the other files, and tokenizer.model if present."""

    source: TokenizerSource
    bpe: BpeModel
    vocabulary: Vocabulary
    sentencepiece: SentencePieceModel | None

    @property
    def json_path(self) -> Path:
        return self.source.path(TOKENIZER_JSON)


def parse_tokenizer(src_dir: Path) -> ParsedTokenizer:
    """Read and check every tokenizer file of `src_dir`; raise TokenizerError on the first problem."""
    source = read_source(Path(src_dir))
    path = source.path(TOKENIZER_JSON)
    bpe = read_bpe(source.tokenizer_json, path)
    vocabulary = read_vocabulary(source.tokenizer_json, bpe, path)
    check_config(source.tokenizer_config, vocabulary.tokens, source.path(TOKENIZER_CONFIG))
    check_config(source.special_tokens_map, vocabulary.tokens, source.path(SPECIAL_TOKENS_MAP))
    check_added_tokens(source.added_tokens, source.path(ADDED_TOKENS))
    spm_path = source.sentencepiece_model
    spm = None
    if spm_path is not None:
        spm = read_sentencepiece(spm_path)
        check_agrees(spm, vocabulary.tokens, spm_path)
    return ParsedTokenizer(source=source, bpe=bpe, vocabulary=vocabulary, sentencepiece=spm)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of small acyclic objects are built.

    Parsing and rewriting a 262k-token tokenizer.json allocates millions of strings, tuples and
    lists; the collector's repeated scans of them would more than double the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
