"""Token ids, token counts and the tokenizer's own prior order of its vocabulary.

Text is encoded the way the model is used (the tokenizer's special tokens, such as a BOS, are
added), in batches through the fast tokenizer. Counting millions of tokens is cheap, so counts
use the whole corpus while activations use a sample. A corpus never sees most of a large
vocabulary, and ranking the tokens it never saw arbitrarily costs coverage on new text (on
SmolLM2, 82% against 94% of unseen English tokens at 16384 kept), so ties in the counts, zero
above all, are broken first by plausibility, then by the tokenizer's prior: the BPE merge rank
(which is id order in byte-level BPE) or the piece score of a Unigram (SentencePiece-style)
model. A never-seen token is plausible when every character of its piece occurs in the pieces
the corpus did produce: a multilingual vocabulary's prior interleaves scripts the calibration
text never uses, and filling the kept vocabulary with those wastes it. Measured on Gemma-3-270M
(262k tokens, English licence calibration, held-out text of the same kind, vocabulary-only
cuts): at 32768 kept tokens +22.1% bits per byte with the prior alone, +8.1% plausible first;
at 52692, +9.7% and +5.7%; tools/eval_quality at -50% of the parameters: +5.1% before, +2.1%
after. On SmolLM2 (49k, mostly English) it changes held-out bits per byte by under 0.1%.

Scores with activations also hold the model's own predicted counts: the sum of its next-token
probabilities over a sample of the calibration positions. They rank the never-counted tokens
before plausibility and the prior: a model reading licence prose gives "licensors" or
"sublicensable" probability mass long before a small corpus happens to spell them, and gives
none to a script the text never uses. Measured on held-out calibration paragraphs (not the
evaluation text), share of their bytes in dropped tokens: SmolLM2 at 19725 kept 1.76% -> 0.78%,
at 16384 2.27% -> 1.05%.

With --general-weight W > 0 and scores that hold the dense model's answers to the general probe,
the domain ranking is merged with a general one slot by slot: a share W of every prefix of the
ranking follows the general ranking (the mean of the answers' token frequency and the model's
predicted distribution over every answer position, so everyday tokens no answer happened to spell
are protected by what the model would say), the rest the domain's. Blending the two frequencies
instead put every weighted everyday token (about 1e-3 x W) ahead of a domain token seen once or
twice (about 1e-5), so on SmolLM2 -20% with licence prose any W from 0.03 cost +8.5% on the domain
against +4.6% at W = 0. W = 0 ranks exactly as before.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError
from converter.io.jsonfile import read_json_object
from converter.tokenizer.source import MAX_TOKENIZER_JSON_BYTES, TOKENIZER_JSON

ENCODE_BATCH = 256


def load_tokenizer(folder: Path) -> Any:
    """The model's fast tokenizer from its own folder (never from a hub)."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise ConvertError("has no tokenizer.json; scoring needs the model's fast tokenizer", folder)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ConvertError(f"tokenizer cannot be loaded ({type(exc).__name__}: {exc})", folder) from exc
    if not getattr(tok, "is_fast", False):
        raise ConvertError("tokenizer is not a fast (tokenizers-backed) tokenizer", folder)
    return tok


def encode(tokenizer: Any, texts: Sequence[str], vocab: int, origin: str = "") -> list[np.ndarray]:
    """Token ids of each text, special tokens included, checked against the model's vocabulary."""
    ids = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    out = [np.asarray(row, dtype=np.int64) for row in ids]
    for row in out:
        if row.size and int(row.max()) >= vocab:
            raise ConvertError(f"the tokenizer produced id {int(row.max())}, beyond the model's vocab_size {vocab}; "
                               "tokenizer and weights do not belong together", origin or None)
    return out


def _merge_pair(merge: object) -> tuple[str, str] | None:
    if isinstance(merge, str):
        parts = merge.split(" ")
        return (parts[0], parts[1]) if len(parts) == 2 else None
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
        return merge[0], merge[1]
    return None


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / TOKENIZER_JSON, MAX_TOKENIZER_JSON_BYTES, "a tokenizer")


def token_prior(folder: Path, vocab: int) -> np.ndarray:
    """Rank of every id by the tokenizer's prior (0 = most basic/common), from tokenizer.json.

    BPE: tokens no merge produces (bytes, characters) first, then merge order; Unigram: piece
    score, highest first; anything else (and added tokens, and embedding rows the tokenizer never
    emits): id order, after the model's own tokens.
    """
    return _prior(_tokenizer_json(folder), vocab)


def _prior(data: dict[str, Any], vocab: int) -> np.ndarray:
    model = data.get("model", {})
    big = np.iinfo(np.int64).max // 4
    tier = np.full(vocab, 3, dtype=np.int64)
    value = np.arange(vocab, dtype=np.int64)
    kind = model.get("type") if isinstance(model, dict) else None
    if kind == "BPE" and isinstance(model.get("vocab"), dict):
        pieces: dict[str, int] = {k: v for k, v in model["vocab"].items() if isinstance(v, int) and 0 <= v < vocab}
        for piece_id in pieces.values():
            tier[piece_id] = 0
        for rank, merge in enumerate(model.get("merges") or []):
            pair = _merge_pair(merge)
            merged = pieces.get(pair[0] + pair[1]) if pair else None
            if merged is not None and tier[merged] == 0:
                tier[merged], value[merged] = 1, rank
    elif kind == "Unigram" and isinstance(model.get("vocab"), list):
        for piece_id, entry in enumerate(model["vocab"][:vocab]):
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float)):
                tier[piece_id] = 1
                value[piece_id] = min(big, round(-float(entry[1]) * 1e6))
    else:
        tier[:] = 1
    order = np.lexsort((np.arange(vocab), value, tier))
    prior = np.empty(vocab, dtype=np.int64)
    prior[order] = np.arange(vocab)
    return prior


def token_pieces(folder: Path, vocab: int) -> list[str]:
    """The piece string of every id (the model's vocabulary, then added tokens); "" where none."""
    return _pieces(_tokenizer_json(folder), vocab)


def _pieces(data: dict[str, Any], vocab: int) -> list[str]:
    model = data.get("model", {})
    pieces = [""] * vocab
    entries = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(entries, dict):
        items = [(v, k) for k, v in entries.items()]
    elif isinstance(entries, list):
        items = [(i, e[0]) for i, e in enumerate(entries) if isinstance(e, list) and e]
    else:
        items = []
    added = data.get("added_tokens")
    items += [(t.get("id"), t.get("content")) for t in added if isinstance(t, dict)] if isinstance(added, list) else []
    for token_id, piece in items:
        if isinstance(token_id, int) and 0 <= token_id < vocab and isinstance(piece, str):
            pieces[token_id] = piece
    return pieces


def plausible_tokens(pieces: Sequence[str], counts: np.ndarray) -> np.ndarray:
    """Per id: True when its piece is made only of characters that the counted pieces contain."""
    seen = set().union(*(pieces[int(i)] for i in np.flatnonzero(counts > 0) if i < len(pieces)))
    return np.fromiter((bool(p) and seen.issuperset(p) for p in pieces), dtype=bool, count=len(pieces))


def rank_tokens(counts: np.ndarray, prior: np.ndarray, plausible: np.ndarray | None = None,
                predicted: np.ndarray | None = None) -> np.ndarray:
    """Token ids from most to least common: counts, the model's predicted counts, plausible ones first,
    the prior, then id."""
    vocab = counts.shape[0]
    keys = [np.arange(vocab), prior]
    if plausible is not None:
        keys.append(~plausible)
    if predicted is not None:
        keys.append(-np.asarray(predicted, dtype=np.float64))
    first = -counts.astype(np.int64) if np.issubdtype(counts.dtype, np.integer) else -counts.astype(np.float64)
    return np.lexsort((*keys, first))


def _share(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.zeros_like(values)


def general_blend(counts: np.ndarray, general_counts: np.ndarray, general_predicted: np.ndarray | None,
                  weight: float) -> np.ndarray:
    """(1 - weight) domain token frequency + weight general frequency (answers' counts and predictions)."""
    general = _share(general_counts)
    if general_predicted is not None:
        general = (general + _share(general_predicted)) / 2
    return (1.0 - weight) * _share(counts) + weight * general


def merge_rankings(domain: np.ndarray, general: np.ndarray, weight: float) -> np.ndarray:
    """Two rankings merged so that a share `weight` of every prefix follows `general`, the rest `domain`.

    A token's place is min(its domain position / (1 - weight), its general position / weight): at 0.3,
    of the first N tokens about 0.7 N are the domain's first and 0.3 N the general ranking's first
    (fewer distinct ones where the two agree). Domain tokens keep their order, so a domain token seen
    once still ranks where the domain put it, instead of behind every weighted everyday token, as a
    blend of frequencies ranked them.
    """
    if weight <= 0:
        return domain
    if weight >= 1:
        return general
    vocab = domain.shape[0]
    position_d = np.empty(vocab, dtype=np.float64)
    position_d[domain] = np.arange(vocab)
    position_g = np.empty(vocab, dtype=np.float64)
    position_g[general] = np.arange(vocab)
    key = np.minimum(position_d / (1.0 - weight), position_g / weight)
    return np.lexsort((position_d, key))


def token_ranking(folder: Path, counts: np.ndarray, predicted: np.ndarray | None = None,
                  general: tuple[np.ndarray, np.ndarray | None] | None = None, weight: float = 0.0) -> np.ndarray:
    """The vocabulary ranking that plans and score buckets use: counts, predictions, plausibility, prior.

    With `general` (the probe answers' counts and predicted counts) and weight > 0 the domain ranking
    and the general one (general_blend at weight 1) are merged slot by slot (merge_rankings).
    """
    vocab = counts.shape[0]
    data = _tokenizer_json(folder)
    prior, pieces = _prior(data, vocab), _pieces(data, vocab)
    domain = rank_tokens(counts, prior, plausible_tokens(pieces, counts), predicted)
    if general is None or weight <= 0:
        return domain
    everyday = general_blend(counts, general[0], general[1], 1.0)
    return merge_rankings(domain, rank_tokens(everyday, prior, plausible_tokens(pieces, everyday)), weight)
