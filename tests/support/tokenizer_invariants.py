"""What a pruned tokenizer must still do, checked against the original on lists of lines.

Shared by the property tests (tiny tokenizers, random keep sets) and the real-tokenizer tests.
Each tokenizer is wrapped as an `Encoder` (raw `tokenizers`, transformers, SentencePiece) so
one check covers every runtime:

- equivalence: a line whose original ids are all kept encodes to exactly the mapped ids;
- lossless: decode(encode(line)) gives the line back, or, where the original tokenizer itself
  does not round-trip the line (normalization such as NFC, or a literal U+2581 that a
  SentencePiece-style decoder turns into a space), what the original gives back; and no
  unknown token appears where the original had none.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

EXTRA_LINES = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<bos>", "<eos>",
    "<start_of_turn>", "<end_of_turn>", "<unused3>", "<|reserved_special_token_3|>", "<mask>",
    "<|im_start|>user\nhello<|im_end|>", "a <|im_end|> b<|endoftext|>c",
    "\n", "\n\n", "\n\n\n\n\n", " \n \n", "\t\n\t", "    \n        x", "x\n\n\n\ny", "  ", "      ", "\t\t\t",
    "line one\nline two\r\nline three", "trailing spaces   ", "   leading spaces",
    "\u2581 literal lower one eighth block \u2581\u2581", "caf\u00e9 vs cafe\u0301", "\u212b vs \u00c5",
    "emoji 👩‍👩‍👧‍👦 🇯🇵 ✊🏽 🏳️‍🌈", "CJK 漢字かなカナ한국어", "mixed العربية עברית हिन्दी ภาษาไทย Ελληνικά русский",
    "zero\u200bwidth\u200djoiner\ufeffbom", "\x00\x01\x02 control \x7f", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚",
]


class Encoder(Protocol):
    """A tokenizer seen as: lines -> id lists, id list -> text."""

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class RawEncoder:
    """A `tokenizers.Tokenizer`, without post-processor specials."""

    tok: Any

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(lines), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True)
class AutoEncoder:
    """A transformers tokenizer loaded with AutoTokenizer."""

    tok: Any

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        return list(self.tok(list(lines), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class SentencePieceEncoder:
    """A `sentencepiece.SentencePieceProcessor`."""

    sp: Any

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(lines))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))


def check_equivalence(old: list[list[int]], new: list[list[int]], kept_ids: Sequence[int],
                      lines: Sequence[str]) -> int:
    """Assert mapped equality on every line whose original ids are all kept; return how many lines that was."""
    old_to_new = {o: n for n, o in enumerate(kept_ids)}
    count = 0
    for line, o, n in zip(lines, old, new, strict=True):
        if all(i in old_to_new for i in o):
            assert n == [old_to_new[i] for i in o], f"line {line!r} tokenizes differently after pruning"
            count += 1
    return count


def check_lossless(old_enc: Encoder, new_enc: Encoder, old: list[list[int]], new: list[list[int]],
                   lines: Sequence[str], old_unk: int | None = None, new_unk: int | None = None) -> tuple[int, int]:
    """Assert every line round-trips as well as it did before; return (lines, lines compared to the original)."""
    against_original = 0
    for line, o, n in zip(lines, old, new, strict=True):
        expected = line
        before = old_enc.decode(o)
        if before != line:
            expected = before
            against_original += 1
        assert new_enc.decode(n) == expected, f"line {line!r} no longer round-trips"
        if new_unk is not None and (old_unk is None or old_unk not in o):
            assert new_unk not in n, f"line {line!r} now encodes to the unknown token"
    return len(lines), against_original
