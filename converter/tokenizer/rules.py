"""The keep-set rules that do not depend on the request: what a tokenizer always needs.

`special`: the unk token, role tokens and extra specials the configs name, ids the
post-processor, padding, config.json or generation_config.json insert (`required`), and
special added tokens / SentencePiece control pieces that are not placeholders (`optional`:
kept only where the embedding has a row for them). `chat_template`: see chat_template.py.
`reserved_ids`: placeholders, for keep_reserved. `byte`: the byte alphabet and the whitespace
marker (SentencePiece's U+2581), or `alphabet` (every one-character token, and the marker) for
a BPE with neither byte-level symbols nor byte fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from converter.tokenizer.bpe_json import byte_alphabet, single_characters, whitespace_markers
from converter.tokenizer.chat_template import rendered_scaffolds, spelled_out
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.named_tokens import is_reserved, named_tokens
from converter.tokenizer.parsed import ParsedTokenizer
from converter.tokenizer.sentencepiece_model import BYTE, CONTROL, UNKNOWN
from converter.tokenizer.special_ids import config_token_ids
from converter.tokenizer.tokenizer_json import load_tokenizer, processor_ids


@dataclass(frozen=True)
class StandingRules:
    """Ids each request-independent rule wants kept."""

    required_special: frozenset[int]
    optional_special: frozenset[int]
    chat_template: frozenset[int]
    byte_rule: str
    byte: frozenset[int]


def _config_ids(tok: ParsedTokenizer) -> set[int]:
    ids: set[int] = set()
    for name, config in tok.source.model_configs.items():
        for key, i in config_token_ids(config, tok.source.path(name)):
            if i not in tok.vocabulary.tokens:
                raise TokenizerError(f"'{key}' is {i}, an id tokenizer.json has no token for; set it to an id the "
                                     "tokenizer has, or to null", tok.source.path(name))
            ids.add(i)
    return ids


def _required_special(tok: ParsedTokenizer) -> set[int]:
    vocab = tok.vocabulary
    names = named_tokens(tok.source.tokenizer_config) | named_tokens(tok.source.special_tokens_map)
    ids = {vocab.ids[n] for n in names if n in vocab.ids}
    if tok.bpe.unk_token is not None:
        ids.add(vocab.ids[tok.bpe.unk_token])
    inserted = processor_ids(tok.source.tokenizer_json, tok.json_path)
    unknown = sorted(inserted - vocab.tokens.keys())
    if unknown:
        raise TokenizerError(f"the post_processor or padding inserts id {unknown[0]}, which has no token in the "
                             "vocabulary; the file is corrupt", tok.json_path)
    return ids | inserted | _config_ids(tok)


def _optional_special(tok: ParsedTokenizer) -> set[int]:
    ids = {t.id for t in tok.vocabulary.added if t.special and not is_reserved(t.content)}
    if tok.sentencepiece is not None:
        spm = tok.sentencepiece
        ids |= {i for i in spm.ids_of_type(CONTROL, UNKNOWN) if not is_reserved(spm.pieces[i])}
    return ids


def _chat_template(tok: ParsedTokenizer, encoder: Tokenizer) -> set[int]:
    templates = tok.source.chat_templates
    ids = spelled_out((t.text for t in templates), tok.vocabulary.added)
    scaffolds = rendered_scaffolds(templates, tok.source.tokenizer_config)
    if scaffolds:
        for encoding in encoder.encode_batch(scaffolds, add_special_tokens=False):
            ids.update(encoding.ids)
    return ids


def _bytes(tok: ParsedTokenizer) -> tuple[str, set[int]]:
    markers = {tok.bpe.vocab[t] for t in whitespace_markers(tok.source.tokenizer_json, tok.bpe)}
    if not (tok.bpe.byte_level or tok.bpe.byte_fallback):
        return "alphabet", markers | {tok.bpe.vocab[t] for t in single_characters(tok.bpe)}
    ids = markers | {tok.bpe.vocab[t] for t in byte_alphabet(tok.bpe)}
    if tok.sentencepiece is not None:
        ids |= set(tok.sentencepiece.ids_of_type(BYTE))
    return "byte", ids


def standing_rules(tok: ParsedTokenizer) -> StandingRules:
    """Evaluate every request-independent rule once.

    The tokenizers library loads the source here whether or not a chat template needs encoding, so a
    file it refuses is refused before anything is written rather than when the rewrite is checked
    (after this package's own checks, whose messages say more).
    """
    byte_rule, byte_ids = _bytes(tok)
    required, optional = _required_special(tok), _optional_special(tok)
    encoder = load_tokenizer(tok.json_path)
    return StandingRules(
        required_special=frozenset(required),
        optional_special=frozenset(optional),
        chat_template=frozenset(_chat_template(tok, encoder)),
        byte_rule=byte_rule,
        byte=frozenset(byte_ids),
    )


def reserved_ids(tok: ParsedTokenizer) -> set[int]:
    """Every placeholder token (asked for with keep_reserved only, so computed on demand)."""
    return {i for i, t in tok.vocabulary.tokens.items() if t[:1] in "<[" and is_reserved(t)}
