"""Shared fixtures: tiny tokenizers and models built once per session, real models cached on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_tokenizers import train_byte_level_bpe, train_sentencepiece_bpe

FIXTURES = Path(__file__).parent / ".fixtures"


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    FIXTURES.mkdir(exist_ok=True)
    return FIXTURES


@pytest.fixture(scope="session")
def byte_level_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_byte_level_bpe(tmp_path_factory.mktemp("bpe-tokenizer"), vocab_size=2000)


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style SentencePiece BPE with byte fallback (tokenizer.model + tokenizer.json)."""
    return train_sentencepiece_bpe(tmp_path_factory.mktemp("spm-tokenizer"), vocab_size=1500)
