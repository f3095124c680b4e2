"""The BPE model section of tokenizer.json: read and check it, name its byte alphabet, rewrite it.

Only BPE can be pruned by dropping vocabulary rows and merges: byte-level BPE (GPT-2, Llama 3,
Qwen, SmolLM2), and SentencePiece-style BPE with byte fallback (Llama 2, Gemma). WordPiece,
Unigram and WordLevel tokenizers are refused rather than rewritten into something that
tokenizes differently. Merges come in two spellings (`"a b"` strings, and `["a", "b"]` pairs
since tokenizers 0.20); a rewrite keeps the source's spelling.
See https://huggingface.co/docs/tokenizers/api/models#tokenizers.models.BPE.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers

from converter.tokenizer.errors import TokenizerError

UNSUPPORTED_MODELS = ("WordPiece", "Unigram", "WordLevel")
MAX_TOKEN_ID = 2**32 - 1  # the tokenizers library stores ids as u32


@dataclass(frozen=True)
class BpeModel:
    """What the keep-set rules need to know about a BPE model."""

    vocab: dict[str, int]
    merges: tuple[tuple[str, str], ...]
    merges_as_strings: bool
    unk_token: str | None
    byte_fallback: bool
    byte_level: bool


def _has_byte_level(node: object) -> bool:
    """True when a normalizer or pre-tokenizer (possibly a Sequence) maps input bytes to symbols."""
    if isinstance(node, dict):
        return node.get("type") == "ByteLevel" or any(_has_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


def _vocab(raw: object, path: Path) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise TokenizerError("model.vocab is not an object mapping tokens to ids", path)
    ids = list(raw.values())
    if not set(map(type, ids)) <= {int} or (ids and not 0 <= min(ids) <= max(ids) <= MAX_TOKEN_ID):
        token, idx = next((t, i) for t, i in raw.items() if type(i) is not int or not 0 <= i <= MAX_TOKEN_ID)
        raise TokenizerError(f"model.vocab gives token {token[:40]!r} the invalid id {repr(idx)[:40]}", path)
    if len(set(ids)) != len(ids):
        raise TokenizerError("model.vocab gives the same id to more than one token", path)
    return raw


def _merges(raw: object, path: Path) -> tuple[tuple[tuple[str, str], ...], bool]:
    """Merges as (a, b) pairs; parts that are not in the vocabulary are caught where they are used."""
    if raw is None:
        return (), False
    if not isinstance(raw, list):
        raise TokenizerError("model.merges is not a list", path)
    kinds = set(map(type, raw))
    if len(kinds) > 1 or not kinds <= {str, list}:
        raise TokenizerError("model.merges must all be 'a b' strings or all [a, b] pairs of tokens", path)
    as_strings = kinds == {str}
    merges = tuple(tuple(m.split(" ")) for m in raw) if as_strings else tuple(map(tuple, raw))
    if not set(map(len, merges)) <= {2} or not (as_strings or all(type(p) is str for m in merges for p in m)):
        bad = next(m for m in merges if len(m) != 2 or not all(type(p) is str for p in m))
        raise TokenizerError(f"model.merges holds {repr(bad)[:80]}, which is not a pair of tokens", path)
    return merges, as_strings


def check_merges_in_vocab(merges: tuple[tuple[str, str], ...], vocab: dict[str, int], path: Path) -> None:
    """Both parts and the result of every merge are tokens, as the tokenizers library requires to load it
    (the planner checks once; the writer trusts the keep set it planned).

    The check runs as C-level loops (a 262k vocabulary has half a million merges); only a failure
    walks the merges in Python to name the first bad one.
    """
    if not merges:
        return
    firsts, seconds = zip(*merges)
    known = vocab.keys()
    if known >= set(firsts) and known >= set(seconds) and all(map(vocab.__contains__, map(str.__add__, firsts,
                                                                                              seconds))):
        return
    for i, (a, b) in enumerate(merges):
        for token in (a, b, a + b):
            if token not in vocab:
                raise TokenizerError(f"model.merges[{i}] merges {a[:40]!r} and {b[:40]!r}, but {token[:40]!r} is not "
                                     "in model.vocab; the file is corrupt", path)


def read_bpe(tokenizer_json: Mapping[str, Any], path: Path) -> BpeModel:
    """Check the model is a BPE this module can rewrite and collect its vocab and merges."""
    model = tokenizer_json.get("model")
    if not isinstance(model, dict):
        raise TokenizerError("has no model section", path)
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind in UNSUPPORTED_MODELS:
        raise TokenizerError(f"uses a {kind} model; only BPE tokenizers (byte-level, or SentencePiece-style "
                             "with byte fallback) can have their vocabulary pruned", path)
    if kind != "BPE":
        raise TokenizerError(f"has model type {kind!r}, which tokenizer surgery does not know", path)
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"BPE model sets {key}={model[key]!r}; such word-piece style BPE is not "
                                 "supported", path)
    unk = model.get("unk_token")
    if unk is not None and not isinstance(unk, str):
        raise TokenizerError(f"model.unk_token is {unk!r}, not a string", path)
    vocab = _vocab(model.get("vocab"), path)
    if unk is not None and unk not in vocab:
        raise TokenizerError(f"model.unk_token {unk!r} is not in model.vocab", path)
    merges, as_strings = _merges(model.get("merges"), path)
    byte_level = _has_byte_level(tokenizer_json.get("pre_tokenizer")) or _has_byte_level(
        tokenizer_json.get("normalizer"))
    return BpeModel(vocab=vocab, merges=merges, merges_as_strings=as_strings, unk_token=unk,
                    byte_fallback=bool(model.get("byte_fallback")), byte_level=byte_level)


def byte_alphabet(model: BpeModel) -> list[str]:
    """Token strings that let any input be encoded: byte-level symbols and/or <0xNN> fallback pieces."""
    symbols: list[str] = []
    if model.byte_level:
        symbols += sorted(pre_tokenizers.ByteLevel.alphabet())
    if model.byte_fallback:
        symbols += [f"<0x{b:02X}>" for b in range(256)]
    return [s for s in symbols if s in model.vocab]


def _substituted(node: object) -> Iterator[str]:
    """Strings Replace and Metaspace steps substitute, at any depth of a normalizer/pre-tokenizer/decoder."""
    if isinstance(node, dict):
        if node.get("type") == "Replace":
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
                yield pattern["String"]
            if isinstance(node.get("content"), str):
                yield node["content"]
        if node.get("type") == "Metaspace" and isinstance(node.get("replacement"), str):
            yield node["replacement"]
        for value in node.values():
            yield from _substituted(value)
    elif isinstance(node, list):
        for value in node:
            yield from _substituted(value)


def whitespace_markers(tokenizer_json: Mapping[str, Any], model: BpeModel) -> list[str]:
    """Tokens for the symbols the pipeline substitutes, such as SentencePiece's U+2581 for a space.

    The decoder turns the marker back into a space only when it arrives as a token of its own;
    spelled in byte-fallback pieces it would decode to a literal U+2581.
    """
    found: set[str] = set()
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        found.update(_substituted(tokenizer_json.get(key)))
    return sorted(t for t in found if t in model.vocab)


def single_characters(model: BpeModel) -> list[str]:
    """Without bytes to fall back on, every one-character token is needed to stay lossless."""
    return [t for t in model.vocab if len(t) == 1]


def rewrite_bpe_model(model_json: Mapping[str, Any], bpe: BpeModel, old_to_new: Mapping[int, int]) -> dict[str, Any]:
    """The model section with kept tokens renumbered and only the merges whose parts and result survive."""
    kept = sorted((old_to_new[i], t) for t, i in bpe.vocab.items() if i in old_to_new)
    vocab = {t: new for new, t in kept}
    raw = model_json.get("merges") or []
    out = dict(model_json)
    out["vocab"] = vocab
    out["merges"] = [m for m, (a, b) in zip(raw, bpe.merges, strict=True)
                     if a in vocab and b in vocab and a + b in vocab]
    return out


def mentions_type(node: object, type_name: str) -> bool:
    """Whether a tokenizer.json component (a normalizer, pre-tokenizer or decoder, perhaps a
    Sequence of them) contains a part of `type_name`, at any depth."""
    if isinstance(node, dict):
        return node.get("type") == type_name or any(mentions_type(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(mentions_type(v, type_name) for v in node)
    return False
