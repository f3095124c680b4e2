"""Merge closure: the tokens BPE has to build on its way to each kept token.

A kept token that BPE reaches through a dropped intermediate could never be produced again, and
text the old tokenizer split into kept tokens would be split differently. So every token on a
kept token's merge path is kept too, recursively.

Which merge builds a token t? When exactly one merge yields t, that one. Tokenizers converted
from tiktoken or SentencePiece list every split of t (`a+bc`, `ab+c`, ...) as a merge, and the
one BPE fires is not simply the lowest-ranked: it depends on which parts form first. BPE that
produces t anywhere has merged only t's own symbols until then (a merge across t's boundary
would leave nothing that spans exactly t), and since ranks are distinct those merges fire in
the same order as when t is encoded on its own. So running BPE on t's characters gives the
merge path t has in every context; every intermediate of that run is recorded, since its own
path is the same argument one level down.

With that, the old tokenizer's run on text it splits into kept tokens fires only merges whose
parts and result are kept; the new tokenizer has exactly those merges, in the same order, and
each step's lowest-ranked candidate is still there, so it makes the same choices.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class BuildPaths(Protocol):
    """Anything that can say which tokens a token is built from."""

    def parts(self, token: str, kept: set[str]) -> tuple[str, ...]: ...


class MergeGraph:
    """Merge ranks and, per token, the merge BPE uses to build it."""

    def __init__(self, merges: Sequence[tuple[str, str]]) -> None:
        self._rank = dict(zip(merges, range(len(merges))))
        self._built_by: dict[str, tuple[str, str] | None] = {}

    def _run_bpe(self, token: str) -> None:
        """Encode `token` alone and record the merge that made each symbol along the way."""
        rank = self._rank
        symbols = list(token)
        while len(symbols) > 1:
            best, at = None, -1
            for i, pair in enumerate(zip(symbols, symbols[1:])):
                r = rank.get(pair)
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            pair = (symbols[at], symbols[at + 1])
            symbols[at:at + 2] = [pair[0] + pair[1]]
            self._built_by.setdefault(symbols[at], pair)
        self._built_by.setdefault(token, None)

    def parts(self, token: str, kept: set[str]) -> tuple[str, ...]:
        """The tokens `token` is merged from (empty for a base symbol or a token BPE never builds)."""
        if token in self._built_by:
            return self._built_by[token] or ()
        producers = [pair for i in range(1, len(token)) if (pair := (token[:i], token[i:])) in self._rank]
        if not producers:
            return ()
        if len(producers) == 1:
            return producers[0]
        if all(a in kept and b in kept for a, b in producers):
            return ()
        self._run_bpe(token)
        return self._built_by[token] or ()


def close_over(kept: Iterable[str], graphs: Sequence[BuildPaths]) -> set[str]:
    """`kept` plus every token on the build paths of its members, under every graph given."""
    closed = set(kept)
    stack = list(closed)
    while stack:
        token = stack.pop()
        for graph in graphs:
            for part in graph.parts(token, closed):
                if part not in closed:
                    closed.add(part)
                    stack.append(part)
    return closed
