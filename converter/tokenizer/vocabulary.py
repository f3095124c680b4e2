"""The id <-> token table of a tokenizer.json: model vocabulary plus added tokens.

Added tokens (specials like `<|im_end|>`, user-defined pieces like Gemma's newline runs) may sit
inside the model vocabulary (SentencePiece conversions) or after it (Qwen, SmolLM2). Both
count as tokens of the tokenizer; an added token whose id the vocabulary gives to another
string means the file is inconsistent and is refused.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.tokenizer.bpe_json import MAX_TOKEN_ID, BpeModel
from converter.tokenizer.errors import TokenizerError


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's added_tokens."""

    id: int
    content: str
    special: bool


@dataclass(frozen=True)
class Vocabulary:
    """Every token the tokenizer can emit, by id and by content."""

    tokens: dict[int, str]
    ids: dict[str, int]
    added: tuple[AddedToken, ...]

    @property
    def size(self) -> int:
        """One past the largest id: the smallest embedding that covers the tokenizer."""
        return max(self.tokens, default=-1) + 1


def _added(raw: object, path: Path) -> list[AddedToken]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TokenizerError("added_tokens is not a list", path)
    out = []
    for i, entry in enumerate(raw):
        idx = entry.get("id") if isinstance(entry, dict) else None
        content = entry.get("content") if isinstance(entry, dict) else None
        if (not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx <= MAX_TOKEN_ID
                or not isinstance(content, str)):
            raise TokenizerError(f"added_tokens[{i}] is {repr(entry)[:80]}; it needs an integer id (0 to "
                                 f"{MAX_TOKEN_ID}) and a string content", path)
        out.append(AddedToken(idx, content, bool(entry.get("special", False))))
    return out


def read_vocabulary(tokenizer_json: Mapping[str, Any], bpe: BpeModel, path: Path) -> Vocabulary:
    """Merge the model vocabulary and the added tokens, checking that they agree."""
    tokens = {i: t for t, i in bpe.vocab.items()}
    ids = dict(bpe.vocab)
    added = _added(tokenizer_json.get("added_tokens"), path)
    for tok in added:
        held = tokens.get(tok.id)
        if held is not None and held != tok.content:
            raise TokenizerError(f"added token {tok.content!r} has id {tok.id}, which already belongs to {held!r}",
                                 path)
        if ids.get(tok.content, tok.id) != tok.id:
            raise TokenizerError(f"added token {tok.content!r} has id {tok.id} but the vocabulary gives it "
                                 f"{ids[tok.content]}", path)
        tokens[tok.id] = tok.content
        ids[tok.content] = tok.id
    return Vocabulary(tokens=tokens, ids=ids, added=tuple(added))
