"""Expand the token ids a prune plan asks for into a keep set the tokenizer can live with.

Starting from the requested ids, rules add what the tokenizer still needs, each counted:
`special` (unk, special added tokens, the tokens configs name, ids the post-processor or
configs insert, SentencePiece control pieces), `chat_template` (what the template spells out
and renders around messages), `reserved` (placeholders, only with keep_reserved), `byte` (the
byte alphabet, so any text still encodes; `alphabet`, single characters, for a BPE without
bytes) and `merge_closure` (see merge_closure.py). New ids are the kept old ids in order.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from converter.tokenizer.bpe_json import byte_alphabet, single_characters
from converter.tokenizer.chat_template import rendered_scaffolds, spelled_out
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.merge_closure import MergeGraph
from converter.tokenizer.named_tokens import is_reserved, named_tokens
from converter.tokenizer.parsed import ParsedTokenizer, parse_tokenizer
from converter.tokenizer.sentencepiece_model import BYTE, CONTROL, UNKNOWN, pieces_of_type
from converter.tokenizer.special_ids import config_token_ids
from converter.tokenizer.tokenizer_json import processor_ids


@dataclass(frozen=True)
class TokenizerRewrite:
    """The final keep set (sorted old ids) and how many ids each rule added to the request."""

    kept_ids: tuple[int, ...]
    added_by_rules: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = self.kept_ids
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TokenizerError("kept_ids must be integers")
        if any(b <= a for a, b in zip(ids, ids[1:])) or (ids and ids[0] < 0):
            raise TokenizerError("kept_ids must be sorted, unique and non-negative")

    def old_to_new(self) -> dict[int, int]:
        """Old id -> new id; new id i is old id kept_ids[i]."""
        return {old: new for new, old in enumerate(self.kept_ids)}


def _requested(requested_ids: Iterable[int], limit: int, tok: ParsedTokenizer) -> set[int]:
    """Requested ids that have a token; ids past the embedding are an error, ids without a token are not."""
    kept: set[int] = set()
    for i in requested_ids:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < limit:
            raise TokenizerError(f"requested token id {i!r} is outside the model's {limit} embedding rows",
                                 tok.source.root)
        if i in tok.vocabulary.tokens:
            kept.add(i)
    return kept


def _config_ids(tok: ParsedTokenizer) -> set[int]:
    ids: set[int] = set()
    for name, config in tok.source.model_configs.items():
        for key, i in config_token_ids(config, tok.source.path(name)):
            if i not in tok.vocabulary.tokens:
                raise TokenizerError(f"'{key}' is {i}, an id tokenizer.json has no token for; set it to an id the "
                                     "tokenizer has, or to null", tok.source.path(name))
            ids.add(i)
    return ids


def _special(tok: ParsedTokenizer, limit: int) -> set[int]:
    """Named, inserted and unk tokens; unnamed specials only where the embedding has a row for them."""
    vocab = tok.vocabulary
    names = named_tokens(tok.source.tokenizer_config) | named_tokens(tok.source.special_tokens_map)
    ids = {vocab.ids[n] for n in names if n in vocab.ids}
    if tok.bpe.unk_token is not None:
        ids.add(vocab.ids[tok.bpe.unk_token])
    ids |= processor_ids(tok.source.tokenizer_json, tok.json_path) | _config_ids(tok)
    unnamed = {t.id for t in vocab.added if t.special and not is_reserved(t.content)}
    if tok.sentencepiece is not None:
        unnamed |= {i for i in pieces_of_type(tok.sentencepiece, CONTROL, UNKNOWN)
                    if not is_reserved(tok.sentencepiece.pieces[i].piece)}
    return ids | {i for i in unnamed if i < limit}


def _chat_template(tok: ParsedTokenizer) -> set[int]:
    templates = tok.source.chat_templates
    ids = spelled_out(templates, tok.vocabulary.added)
    scaffolds = rendered_scaffolds(templates, tok.source.tokenizer_config)
    if scaffolds:
        encoder = Tokenizer.from_file(str(tok.json_path))
        for encoding in encoder.encode_batch(scaffolds, add_special_tokens=False):
            ids.update(encoding.ids)
    return ids


def _reserved(tok: ParsedTokenizer) -> set[int]:
    return {i for i, t in tok.vocabulary.tokens.items() if is_reserved(t)}


def _bytes(tok: ParsedTokenizer) -> tuple[str, set[int]]:
    if not (tok.bpe.byte_level or tok.bpe.byte_fallback):
        return "alphabet", {tok.bpe.vocab[t] for t in single_characters(tok.bpe)}
    ids = {tok.bpe.vocab[t] for t in byte_alphabet(tok.bpe)}
    if tok.sentencepiece is not None:
        ids |= set(pieces_of_type(tok.sentencepiece, BYTE))
    return "byte", ids


def _closure(tok: ParsedTokenizer, kept: set[int]) -> set[int]:
    tokens = tok.vocabulary.tokens
    model_tokens = {tokens[i] for i in kept if tokens[i] in tok.bpe.vocab}
    closed = MergeGraph(tok.bpe.merges).closure(model_tokens)
    return {tok.bpe.vocab[t] for t in closed}


def _check_fits(kept: set[int], requested: set[int], limit: int, tok: ParsedTokenizer) -> None:
    beyond = sorted(i for i in kept - requested if i >= limit)
    if beyond:
        i = beyond[0]
        raise TokenizerError(f"token {tok.vocabulary.tokens[i]!r} (id {i}) must be kept but lies beyond the "
                             f"model's {limit} embedding rows ({len(beyond)} such ids)", tok.json_path)


def plan_tokenizer(src_dir: Path, requested_ids: Sequence[int], *, vocab_size: int | None = None,
                   keep_reserved: bool = False) -> TokenizerRewrite:
    """The keep set for `requested_ids` (old ids) after every rule; see the module docstring.

    `vocab_size` is the model's embedding rows, which may exceed the tokenizer (padded
    embeddings): requested ids in the padding are dropped; ids at or past it are errors.
    """
    tok = parse_tokenizer(Path(src_dir))
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size <= 0):
        raise TokenizerError(f"vocab_size must be a positive integer, got {vocab_size!r}", tok.source.root)
    limit = vocab_size if vocab_size is not None else tok.vocabulary.size
    requested = _requested(requested_ids, limit, tok)
    kept = set(requested)
    added: dict[str, int] = {}

    def apply(rule: str, ids: set[int]) -> None:
        new = ids - kept
        kept.update(new)
        added[rule] = added.get(rule, 0) + len(new)

    apply("special", _special(tok, limit))
    apply("chat_template", _chat_template(tok))
    if keep_reserved:
        apply("reserved", _reserved(tok))
    apply(*_bytes(tok))
    apply("merge_closure", _closure(tok, kept))
    _check_fits(kept, requested, limit, tok)
    return TokenizerRewrite(tuple(sorted(kept)), added)
