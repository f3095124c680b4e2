"""Expand the token ids a prune plan asks for into a keep set the tokenizer can live with.

Starting from the requested ids, rules add what the tokenizer still needs, each counted in
`added_by_rules`: `special`, `chat_template`, `reserved` (only with keep_reserved), `byte` or
`alphabet` (see rules.py), `sentencepiece_unused` (see sentencepiece_closure.py) and
`merge_closure` (see merge_closure.py and sentencepiece_closure.py). New ids are the kept old
ids in order. `TokenizerPlanner` parses the folder once for callers that plan many keep sets
(fitting a vocabulary budget); `plan_tokenizer` is the one-shot form.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from converter.tokenizer.bpe_json import check_merges_in_vocab
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.merge_closure import BuildPaths, MergeGraph, close_over
from converter.tokenizer.parsed import gc_paused, parse_tokenizer
from converter.tokenizer.rules import reserved_ids, standing_rules
from converter.tokenizer.sentencepiece_closure import SentencePieceGraph


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


class TokenizerPlanner:
    """Keep sets for one tokenizer folder: parsed and rule-checked once, then planned many times.

    Holds the parsed tokenizer (a few hundred MB for a 262k vocabulary) until it is dropped.
    """

    def __init__(self, src_dir: Path) -> None:
        with gc_paused():
            self._tok = parse_tokenizer(Path(src_dir))
            check_merges_in_vocab(self._tok.bpe.merges, self._tok.bpe.vocab, self._tok.json_path)
            self._rules = standing_rules(self._tok)
        spm = self._tok.sentencepiece
        self._spm_graph = SentencePieceGraph(spm) if spm is not None else None
        self._merge_graph: MergeGraph | None = None
        self._reserved: set[int] | None = None

    def _requested(self, requested_ids: Iterable[int], limit: int) -> set[int]:
        """Requested ids that have a token; ids past the embedding are an error, ids without a token are not."""
        tokens = self._tok.vocabulary.tokens
        kept: set[int] = set()
        for i in requested_ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < limit:
                raise TokenizerError(f"requested token id {i!r} is outside the model's {limit} embedding rows",
                                     self._tok.source.root)
            if i in tokens:
                kept.add(i)
        return kept

    def _closure(self, kept: set[int]) -> set[int]:
        tok = self._tok
        tokens = tok.vocabulary.tokens
        if len(kept) == len(tokens):
            return kept
        if self._merge_graph is None:
            self._merge_graph = MergeGraph(tok.bpe.merges)
        graphs: list[BuildPaths] = [self._merge_graph]
        if self._spm_graph is not None:
            graphs.append(self._spm_graph)
        closed = close_over((tokens[i] for i in kept), graphs)
        unknown = sorted(closed - tok.vocabulary.ids.keys())
        if unknown:
            raise TokenizerError(f"model.merges builds {len(unknown)} tokens from parts that are not in model.vocab "
                                 f"(first: {unknown[0]!r}); the file is corrupt", tok.json_path)
        return {tok.vocabulary.ids[t] for t in closed}

    def _check_fits(self, limit: int) -> None:
        """Every token but a special one needs an embedding row, or the tokenizer belongs to another model.

        Special added tokens past the embedding (a multimodal tokenizer beside a text-only model)
        are dropped, as the `special` rule documents; any other id there is an error.
        """
        tokens = self._tok.vocabulary.tokens
        beyond = sorted(i for i in tokens if i >= limit and i not in self._rules.optional_special)
        if beyond:
            i = beyond[0]
            raise TokenizerError(f"token {tokens[i][:40]!r} has id {i}, beyond the model's {limit} embedding rows "
                                 f"(config.json vocab_size; {len(beyond)} such ids); the tokenizer does not belong "
                                 "to this model", self._tok.json_path)

    def plan(self, requested_ids: Iterable[int], *, vocab_size: int | None = None,
             keep_reserved: bool = False) -> TokenizerRewrite:
        """The keep set for `requested_ids`; see plan_tokenizer."""
        if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                       or vocab_size <= 0):
            raise TokenizerError(f"vocab_size must be a positive integer, got {vocab_size!r}", self._tok.source.root)
        limit = vocab_size if vocab_size is not None else self._tok.vocabulary.size
        self._check_fits(limit)
        rules = self._rules
        requested = self._requested(requested_ids, limit)
        kept = set(requested)
        added: dict[str, int] = {}

        def apply(rule: str, ids: Iterable[int]) -> None:
            new = set(ids) - kept
            kept.update(new)
            added[rule] = len(new)

        apply("special", rules.required_special | {i for i in rules.optional_special if i < limit})
        apply("chat_template", rules.chat_template)
        if keep_reserved:
            if self._reserved is None:
                self._reserved = reserved_ids(self._tok)
            apply("reserved", (i for i in self._reserved if i < limit))
        apply(rules.byte_rule, rules.byte)
        if self._spm_graph is not None:
            ids = self._tok.vocabulary.ids
            apply("sentencepiece_unused", (ids[p] for p in self._spm_graph.buildable_unused()))
        with gc_paused():
            apply("merge_closure", self._closure(kept))
        return TokenizerRewrite(tuple(sorted(kept)), added)


def plan_tokenizer(src_dir: Path, requested_ids: Sequence[int], *, vocab_size: int | None = None,
                   keep_reserved: bool = False) -> TokenizerRewrite:
    """The keep set for `requested_ids` (old ids) after every rule; see the module docstring.

    `vocab_size` is the model's embedding rows, which may exceed the tokenizer (padded
    embeddings): requested ids in the padding are dropped; ids at or past it are errors, and so
    are tokenizer ids at or past it, except special added tokens (dropped).
    """
    return TokenizerPlanner(Path(src_dir)).plan(requested_ids, vocab_size=vocab_size, keep_reserved=keep_reserved)
