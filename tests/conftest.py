"""Shared fixtures: tiny tokenizers and models built once per session, real models cached on disk."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.scratch import ModuleTmp
from tests.support.tiny_tokenizers import train_byte_level_bpe, train_sentencepiece_bpe

FIXTURES = Path(__file__).parent / ".fixtures"

# The test files that take longest (each one to two minutes on 2 cores), slowest first. pytest-xdist
# (`--dist loadfile`, see tools/test.sh) hands files to workers in collection order, so starting
# with these keeps one worker from finishing a long file alone at the end.
SLOW_FILES_FIRST = ("test_interrupts_gguf_onnx.py", "test_onnx_families.py", "test_gguf_real.py",
                    "test_interrupts.py", "test_onnx_precision.py", "test_verify.py", "test_onnx_smollm2.py",
                    "test_tokenizer_real.py")


def pytest_configure(config: pytest.Config) -> None:
    """Let the CLI processes the tests start take Ctrl-C as a user's terminal delivers it.

    A shell without job control starts background commands (`.ci/run &`, nohup) with SIGINT
    ignored, and an ignored signal stays ignored across exec, so every child would then shrug off
    the interrupt tests' SIGINT and finish. Only SIG_IGN is inherited: installing Python's own
    handler here gives each child the default disposition again.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slowest files first (stable: every other test keeps its order)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    FIXTURES.mkdir(exist_ok=True)
    return FIXTURES


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleTmp]:
    """Folders for a module's fixtures, removed when the module ends (see tests/support/scratch.py)."""
    scratch = ModuleTmp(tmp_path_factory)
    yield scratch
    scratch.remove_all()


@pytest.fixture(scope="session")
def byte_level_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_byte_level_bpe(tmp_path_factory.mktemp("bpe-tokenizer"), vocab_size=2000)


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style SentencePiece BPE with byte fallback (tokenizer.model + tokenizer.json)."""
    return train_sentencepiece_bpe(tmp_path_factory.mktemp("spm-tokenizer"), vocab_size=1500)
