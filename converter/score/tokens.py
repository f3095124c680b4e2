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
the first key is a blend instead of the domain counts: (1 - W) times the domain's token frequency
plus W times the general frequency, itself the mean of the answers' token frequency and the
model's predicted distribution over every answer position (so everyday tokens no answer happened
to spell are protected by what the model would say). W = 0 ranks exactly as before.
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


def token_ranking(folder: Path, counts: np.ndarray, predicted: np.ndarray | None = None,
                  general: tuple[np.ndarray, np.ndarray | None] | None = None, weight: float = 0.0) -> np.ndarray:
    """The vocabulary ranking that plans and score buckets use: counts, predictions, plausibility, prior.

    With `general` (the probe answers' counts and predicted counts) and weight > 0 the counts are
    blended with them first (general_blend).
    """
    vocab = counts.shape[0]
    data = _tokenizer_json(folder)
    first = counts if general is None or weight <= 0 else general_blend(counts, general[0], general[1], weight)
    return rank_tokens(first, _prior(data, vocab), plausible_tokens(_pieces(data, vocab), first), predicted)
