"""SentencePiece `tokenizer.model`: parse, check against tokenizer.json, and rewrite.

The file is a `sentencepiece.ModelProto` protobuf (parsed with the schema the sentencepiece
package ships; never unpickled). Its piece i must be tokenizer.json's token i, so the rewrite is
the kept pieces, with their scores and types, in kept order. Piece types tell the keep-set
rules which ids are control/unknown (specials) and which are `<0xNN>` byte-fallback pieces.
Only the pieces and the trainer, normalizer and denormalizer specs are carried over; anything
else (`self_test_data`, whose expected segmentations name pieces that may be gone) is dropped.
See https://github.com/google/sentencepiece/blob/master/src/sentencepiece_model.proto.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.tokenizer.errors import TokenizerError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5
MODEL_TYPE_BPE = 2
MODEL_TYPE_NAMES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
MAX_MODEL_BYTES = 512 << 20


def _schema() -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise TokenizerError("rewriting tokenizer.model needs the sentencepiece and protobuf packages; "
                             "pip install sentencepiece protobuf") from exc
    return sentencepiece_model_pb2


@dataclass(frozen=True)
class SentencePieceModel:
    """The parsed protobuf plus its pieces, scores and types as plain tuples (protobuf access is slow)."""

    proto: Any
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]

    def ids_of_type(self, *types: int) -> list[int]:
        """Ids of the pieces whose type is one of `types`."""
        return [i for i, t in enumerate(self.types) if t in types]


def parse_sentencepiece(path: Path) -> Any:
    """The `ModelProto` of `path`, refused unless it parses and has pieces and a trainer_spec (of any
    model type: a tokenizer.model copied unchanged need not be BPE)."""
    schema = _schema()
    from google.protobuf.message import DecodeError

    if path.stat().st_size > MAX_MODEL_BYTES:
        raise TokenizerError(f"is implausibly large for a SentencePiece model ({path.stat().st_size:,} bytes)", path)
    model = schema.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, OSError, RuntimeError, ValueError) as exc:
        raise TokenizerError(f"is not a valid SentencePiece model ({type(exc).__name__}: {exc})", path) from exc
    if not model.pieces or not model.HasField("trainer_spec"):
        raise TokenizerError("is not a SentencePiece model (no pieces or no trainer_spec); it may be a tiktoken "
                             "or other file under the same name", path)
    return model


def read_sentencepiece(path: Path) -> SentencePieceModel:
    """The parsed model, refused unless it is a BPE model with pieces."""
    model = parse_sentencepiece(path)
    kind = model.trainer_spec.model_type
    if kind != MODEL_TYPE_BPE:
        raise TokenizerError(f"is a SentencePiece {MODEL_TYPE_NAMES.get(kind, kind)} model; only BPE can be "
                             "pruned", path)
    triples = [(p.piece, p.score, p.type) for p in model.pieces]
    pieces, scores, types = zip(*triples)
    return SentencePieceModel(model, pieces, scores, types)


def check_agrees(model: SentencePieceModel, tokens: Mapping[int, str], path: Path) -> None:
    """Piece i must be tokenizer.json's token i, or the two files describe different tokenizers."""
    expected = tuple(map(tokens.get, range(len(model.pieces))))
    if expected != model.pieces:
        i = next(i for i, (p, t) in enumerate(zip(model.pieces, expected)) if p != t)
        raise TokenizerError(f"piece {i} is {model.pieces[i]!r} but tokenizer.json's token {i} is {expected[i]!r}; "
                             "the two files describe different tokenizers", path)


def rewrite_sentencepiece(model: SentencePieceModel, kept_ids: Sequence[int]) -> bytes:
    """The serialized model holding only the kept pieces, renumbered; spec ids follow them."""
    schema = _schema()
    source = model.proto
    count = len(model.pieces)
    kept = [i for i in kept_ids if i < count]
    new_id = {old: new for new, old in enumerate(kept)}
    out = schema.ModelProto()
    out.trainer_spec.CopyFrom(source.trainer_spec)
    out.normalizer_spec.CopyFrom(source.normalizer_spec)
    if source.HasField("denormalizer_spec"):
        out.denormalizer_spec.CopyFrom(source.denormalizer_spec)
    out.pieces.extend(source.pieces[i] for i in kept)
    spec = out.trainer_spec
    spec.vocab_size = len(kept)
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(spec, field)
        if old >= 0:
            setattr(spec, field, new_id.get(old, -1))
    return out.SerializeToString()
