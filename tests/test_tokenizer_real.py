"""Tokenizer surgery on real tokenizers: SmolLM2 and Qwen2.5 (byte-level BPE), Gemma 3
(SentencePiece-style BPE with byte fallback, also as tokenizer.model).

For each, keep the N most frequent tokens of pydoc + standard-library text (N = 4096, 16384)
plus what the rules add, rewrite, and check against the original on ~21k lines: equivalence
(lines whose original ids are all kept encode to the mapped ids, through `tokenizers`,
AutoTokenizer and SentencePiece), lossless round trips of varied text (prose, code, scripts,
emoji, whitespace runs, special-token strings; where the original itself does not round-trip
a line, e.g. NFC or a literal U+2581, its own decode is the reference), special tokens as one
token each, and identical chat templates. The folders are cached under tests/.fixtures/.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from converter.tokenizer import TokenizerRewrite, plan_tokenizer, remap_special_ids, write_tokenizer
from tests.support.real_tokenizers import (frequency_lines, gemma3_tokenizer_dir, most_frequent, qwen_tokenizer_dir,
                                   smollm2_tokenizer_dir, stdlib_lines, token_counts)
from tests.support.tiny_tokenizers import corpus_lines
from tests.support.tokenizer_invariants import (EXTRA_LINES, AutoEncoder, RawEncoder, SentencePieceEncoder,
                                                check_equivalence, check_lossless)
from tools.make_varied_corpus import read_corpus
from tests.support.scratch import ModuleTmp

REAL: dict[str, Callable[[], Path]] = {
    "smollm2": smollm2_tokenizer_dir, "qwen2.5": qwen_tokenizer_dir, "gemma3": gemma3_tokenizer_dir,
}
EMBEDDING_ROWS = {"smollm2": 49152, "qwen2.5": 151936, "gemma3": 262144}
MIN_EQUIVALENT_LINES = {4096: 4000, 16384: 8000}
CONVERSATION = [
    {"role": "user", "content": "If the function is called with an object, what is returned?"},
    {"role": "assistant", "content": "The function returns a new sorted list of the values."},
]


@dataclass(frozen=True)
class Original:
    name: str
    folder: Path
    raw: Tokenizer
    auto: object
    lines: list[str]
    varied: list[str]
    raw_ids: list[list[int]]
    auto_ids: list[list[int]]
    counts: dict[int, int]


@dataclass(frozen=True)
class Pruned:
    original: Original
    n: int
    rewrite: TokenizerRewrite
    folder: Path
    seconds: float
    raw: Tokenizer
    raw_ids: list[list[int]]


@pytest.fixture(scope="module", params=list(REAL))
def original(request: pytest.FixtureRequest) -> Original:
    name = request.param
    folder = REAL[name]()
    varied = read_corpus() + EXTRA_LINES
    lines = corpus_lines() + stdlib_lines()[::10] + varied
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(folder)
    return Original(name, folder, raw, auto, lines, varied, RawEncoder(raw).encode_batch(lines),
                    AutoEncoder(auto).encode_batch(lines), token_counts(folder, frequency_lines()))


@pytest.fixture(scope="module", params=[4096, 16384])
def pruned(original: Original, request: pytest.FixtureRequest, module_tmp: ModuleTmp) -> Pruned:
    n = request.param
    requested = most_frequent(original.counts, n, original.raw.get_vocab_size())
    out = module_tmp.mktemp(f"{original.name}-{n}")
    start = time.perf_counter()
    rewrite = plan_tokenizer(original.folder, requested, vocab_size=EMBEDDING_ROWS[original.name])
    write_tokenizer(original.folder, rewrite, out)
    seconds = time.perf_counter() - start
    print(f"\n{original.name} N={n}: requested {len(set(requested))} -> kept {len(rewrite.kept_ids)} "
          f"{rewrite.added_by_rules}; plan+write {seconds:.1f} s")
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    return Pruned(original, n, rewrite, out, seconds, raw, RawEncoder(raw).encode_batch(original.lines))


def test_equivalent_and_lossless_through_tokenizers(pruned: Pruned) -> None:
    o = pruned.original
    same = check_equivalence(o.raw_ids, pruned.raw_ids, pruned.rewrite.kept_ids, o.lines)
    checked, by_original = check_lossless(RawEncoder(o.raw), RawEncoder(pruned.raw), o.raw_ids, pruned.raw_ids,
                                          o.lines, o.raw.token_to_id("<unk>"), pruned.raw.token_to_id("<unk>"))
    print(f"\n{o.name} N={pruned.n}: {same}/{len(o.lines)} lines equivalent, {checked} lossless "
          f"({by_original} against the original's own decode)")
    assert same >= MIN_EQUIVALENT_LINES[pruned.n]


def test_auto_tokenizer_loads_and_agrees(pruned: Pruned) -> None:
    o = pruned.original
    auto = AutoTokenizer.from_pretrained(pruned.folder)
    assert type(auto) is type(o.auto)
    assert len(auto) == len(pruned.rewrite.kept_ids)
    ids = AutoEncoder(auto).encode_batch(o.lines)
    assert ids == pruned.raw_ids
    assert check_equivalence(o.auto_ids, ids, pruned.rewrite.kept_ids, o.lines) >= MIN_EQUIVALENT_LINES[pruned.n]
    check_lossless(AutoEncoder(o.auto), AutoEncoder(auto), o.auto_ids, ids, o.lines)
    for token in auto.all_special_tokens:
        assert auto.encode(token, add_special_tokens=False) == [auto.convert_tokens_to_ids(token)]
    for token in pruned.raw.get_added_tokens_decoder().values():
        assert pruned.raw.encode(token.content, add_special_tokens=False).ids == [
            pruned.raw.token_to_id(token.content)]
    old_text = o.auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert auto.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == old_text
    old_ids = o.auto.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    new_ids = auto.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)
    m = pruned.rewrite.old_to_new()
    assert all(i in m for i in old_ids), "the conversation uses tokens outside the keep set"
    assert new_ids == [m[i] for i in old_ids]


def test_model_configs_remap(pruned: Pruned) -> None:
    import json

    m = pruned.rewrite.old_to_new()
    for name in ("config.json", "generation_config.json"):
        config = json.loads((pruned.original.folder / name).read_text())
        remapped = remap_special_ids(config, m, where=name)
        eos = config["eos_token_id"]
        assert remapped["eos_token_id"] == ([m[i] for i in eos] if isinstance(eos, list) else m[eos])


def test_sentencepiece_model_is_rewritten_consistently(pruned: Pruned, tmp_path: Path) -> None:
    o = pruned.original
    if not (o.folder / "tokenizer.model").is_file():
        assert not (pruned.folder / "tokenizer.model").exists()
        return
    old = spm.SentencePieceProcessor(model_file=str(o.folder / "tokenizer.model"))
    new = spm.SentencePieceProcessor(model_file=str(pruned.folder / "tokenizer.model"))
    assert new.get_piece_size() == len(pruned.rewrite.kept_ids)
    old_ids, new_ids = old.encode(o.lines), new.encode(o.lines)
    same = check_equivalence(old_ids, new_ids, pruned.rewrite.kept_ids, o.lines)
    check_lossless(SentencePieceEncoder(old), SentencePieceEncoder(new), old_ids, new_ids, o.lines)
    assert same >= MIN_EQUIVALENT_LINES[pruned.n]
    agree_before = [a == b for a, b in zip(old_ids, o.raw_ids)]
    assert all(a == b for a, b, before in zip(new_ids, pruned.raw_ids, agree_before) if before)
    only_model = tmp_path / "spm-only"
    only_model.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(pruned.folder / name, only_model / name)
    converted = AutoTokenizer.from_pretrained(only_model)
    assert len(converted) == len(pruned.rewrite.kept_ids)
    converted_ids = AutoEncoder(converted).encode_batch(o.varied)
    assert [AutoEncoder(converted).decode(ids) for ids in converted_ids] == [
        AutoEncoder(o.auto).decode(ids) for ids in AutoEncoder(o.auto).encode_batch(o.varied)]


def test_gemma3_rewrite_is_fast(original: Original, pruned: Pruned) -> None:
    if original.name != "gemma3":
        return
    print(f"\ngemma3 N={pruned.n}: plan_tokenizer + write_tokenizer took {pruned.seconds:.1f} s")
    assert pruned.seconds < 30
