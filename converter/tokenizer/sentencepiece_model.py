"""SentencePiece `tokenizer.model`: parse, check against tokenizer.json, and rewrite.

The file is a `sentencepiece.ModelProto` protobuf (parsed with the schema the sentencepiece
package ships; never unpickled). Its piece i must be tokenizer.json's token i, so the rewrite is
the kept pieces, with their scores and types, in kept order. Piece types tell the keep-set
rules which ids are control/unknown (specials) and which are `<0xNN>` byte-fallback pieces.
`self_test_data` is dropped: its expected segmentations name pieces that may be gone, and
SentencePiece refuses to load a model whose self test fails.
See https://github.com/google/sentencepiece/blob/master/src/sentencepiece_model.proto.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converter.tokenizer.errors import TokenizerError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5
MODEL_TYPE_BPE = 2
MODEL_TYPE_NAMES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


def _schema() -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise TokenizerError("rewriting tokenizer.model needs the sentencepiece and protobuf packages; "
                             "pip install sentencepiece protobuf") from exc
    return sentencepiece_model_pb2


def read_sentencepiece(path: Path) -> Any:
    """The parsed ModelProto, refused unless it is a BPE model with pieces."""
    schema = _schema()
    from google.protobuf.message import DecodeError

    model = schema.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, OSError, RuntimeError, ValueError) as exc:
        raise TokenizerError(f"is not a valid SentencePiece model ({type(exc).__name__}: {exc})", path) from exc
    if not model.pieces or not model.HasField("trainer_spec"):
        raise TokenizerError("is not a SentencePiece model (no pieces or no trainer_spec); it may be a tiktoken "
                             "or other file under the same name", path)
    kind = model.trainer_spec.model_type
    if kind != MODEL_TYPE_BPE:
        raise TokenizerError(f"is a SentencePiece {MODEL_TYPE_NAMES.get(kind, kind)} model; only BPE can be "
                             "pruned", path)
    return model


def pieces_of_type(model: Any, *types: int) -> list[int]:
    """Ids of the pieces whose type is one of `types`."""
    return [i for i, p in enumerate(model.pieces) if p.type in types]


def check_agrees(model: Any, tokens: Mapping[int, str], ids: Sequence[int], path: Path) -> None:
    """Each id that the model has must name the same piece as in tokenizer.json."""
    count = len(model.pieces)
    for i in ids:
        if i < count and model.pieces[i].piece != tokens.get(i):
            raise TokenizerError(f"piece {i} is {model.pieces[i].piece!r} but tokenizer.json's token {i} is "
                                 f"{tokens.get(i)!r}; the two files describe different tokenizers", path)


def rewrite_sentencepiece(model: Any, kept_ids: Sequence[int]) -> bytes:
    """The serialized model holding only the kept pieces, renumbered; spec ids follow them."""
    schema = _schema()
    count = len(model.pieces)
    kept = [i for i in kept_ids if i < count]
    new_id = {old: new for new, old in enumerate(kept)}
    out = schema.ModelProto()
    out.trainer_spec.CopyFrom(model.trainer_spec)
    out.normalizer_spec.CopyFrom(model.normalizer_spec)
    if model.HasField("denormalizer_spec"):
        out.denormalizer_spec.CopyFrom(model.denormalizer_spec)
    out.pieces.extend(model.pieces[i] for i in kept)
    spec = out.trainer_spec
    spec.vocab_size = len(kept)
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(spec, field)
        if old >= 0:
            setattr(spec, field, new_id.get(old, -1))
    return out.SerializeToString()
