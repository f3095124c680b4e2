"""Property tests: random keep sets on tiny trained tokenizers of both BPE styles.

For any request the planner expands it so that the rewritten tokenizer (a) tokenizes every
line whose original ids are all kept to exactly the mapped ids, (b) round-trips every line as
well as the original did, with no new unknown tokens, (c) still encodes each kept added token
as one token, and (d) can still build every kept token BPE could build before. The rewritten
tokenizer.model obeys (a) and (b) under SentencePiece itself, and the folder loads with
AutoTokenizer, whose chat template renders the same text and, where every token is kept, the
mapped ids.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from converter.tokenizer import plan_tokenizer, write_tokenizer
from tests.support.tiny_tokenizers import corpus_lines, train_byte_level_bpe, train_sentencepiece_bpe
from tests.support.tokenizer_invariants import (EXTRA_LINES, RawEncoder, SentencePieceEncoder, check_equivalence,
                                        check_lossless)
from tools.make_varied_corpus import read_corpus
from tests.support.scratch import ModuleTmp

CONVERSATION = [{"role": "user", "content": "What is the value of the expression?"},
                {"role": "assistant", "content": "The value of the expression is an object."}]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TinyCase:
    """A trained tokenizer folder with its original encodings of the test lines, computed once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.old = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.size = self.old.get_vocab_size()
        self.lines = corpus_lines()[::20] + read_corpus() + EXTRA_LINES
        self.old_ids = RawEncoder(self.old).encode_batch(self.lines)
        counts: dict[int, int] = {}
        for ids in self.old_ids:
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
        self.by_frequency = sorted(counts, key=lambda i: (-counts[i], i))
        self.buildable = [t for t, i in self.old.get_vocab().items() if self.old.model.tokenize(t)[0].id == i
                          and len(self.old.model.tokenize(t)) == 1]
        spm_path = folder / "tokenizer.model"
        self.old_spm = spm.SentencePieceProcessor(model_file=str(spm_path)) if spm_path.is_file() else None
        self.old_spm_ids = self.old_spm.encode(self.lines) if self.old_spm else None
        auto = AutoTokenizer.from_pretrained(folder)
        self.chat_text = auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        self.chat_ids = auto.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)


@pytest.fixture(scope="module")
def byte_level(module_tmp: ModuleTmp) -> TinyCase:
    return TinyCase(train_byte_level_bpe(module_tmp.mktemp("bpe"), vocab_size=2000))


@pytest.fixture(scope="module")
def sentencepiece(module_tmp: ModuleTmp) -> TinyCase:
    return TinyCase(train_sentencepiece_bpe(module_tmp.mktemp("spm"), vocab_size=1500))


keep_sets = st.tuples(st.sampled_from(["random", "frequent"]), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0),
                      st.booleans())


def _request(case: TinyCase, mode: str, seed: int, fraction: float) -> list[int]:
    rng = random.Random(seed)
    if mode == "frequent":
        top = case.by_frequency[:int(fraction * len(case.by_frequency))]
        return top + rng.sample(range(case.size), k=rng.randrange(0, 20))
    return [i for i in range(case.size) if rng.random() < fraction]


def _check(case: TinyCase, mode: str, seed: int, fraction: float, keep_reserved: bool) -> None:
    rewrite = plan_tokenizer(case.folder, _request(case, mode, seed, fraction), keep_reserved=keep_reserved)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_tokenizer(case.folder, rewrite, out)
        new = Tokenizer.from_file(str(out / "tokenizer.json"))
        new_ids = RawEncoder(new).encode_batch(case.lines)
        check_equivalence(case.old_ids, new_ids, rewrite.kept_ids, case.lines)
        unk = case.old.token_to_id("<unk>")
        check_lossless(RawEncoder(case.old), RawEncoder(new), case.old_ids, new_ids, case.lines,
                       unk, new.token_to_id("<unk>") if unk is not None else None)
        m = rewrite.old_to_new()
        for token in new.get_added_tokens_decoder().values():
            assert new.encode(token.content, add_special_tokens=False).ids == [new.token_to_id(token.content)]
        for token in case.buildable:
            if case.old.token_to_id(token) in m:
                assert [t.value for t in new.model.tokenize(token)] == [token], f"{token!r} is no longer built"
        auto = AutoTokenizer.from_pretrained(out)
        assert auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == case.chat_text
        chat_ids = auto.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)
        if all(i in m for i in case.chat_ids):
            assert chat_ids == [m[i] for i in case.chat_ids]
        if case.old_spm is not None:
            new_spm = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
            spm_ids = new_spm.encode(case.lines)
            check_equivalence(case.old_spm_ids, spm_ids, rewrite.kept_ids, case.lines)
            check_lossless(SentencePieceEncoder(case.old_spm), SentencePieceEncoder(new_spm), case.old_spm_ids,
                           spm_ids, case.lines)


@SETTINGS
@given(keep=keep_sets)
def test_byte_level_bpe_random_keep_sets(byte_level: TinyCase, keep: tuple[str, int, float, bool]) -> None:
    _check(byte_level, *keep)


@SETTINGS
@given(keep=keep_sets)
def test_sentencepiece_bpe_random_keep_sets(sentencepiece: TinyCase, keep: tuple[str, int, float, bool]) -> None:
    _check(sentencepiece, *keep)
