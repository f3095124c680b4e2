"""The SentencePiece side of the merge closure: how `spm` BPE itself builds each piece.

SentencePiece's BPE (bpe_model.cc) has no merge list: any two adjacent symbols whose
concatenation is a piece (NORMAL, USER_DEFINED or UNUSED) may merge, the highest-scored
first, leftmost on ties; user-defined pieces are matched first and never merge. Its build path
for a piece can differ from the one tokenizer.json's derived merges take, so when a
tokenizer.model is rewritten both paths are kept. The argument of merge_closure.py carries
over: the priority is a total order on simultaneous candidates, so a piece is built in every
context exactly as when it is encoded alone.

UNUSED pieces are a trap: BPE may build one and then split it back into the parts it came from
(resegmentation), so dropping it would let those parts merge differently. Every UNUSED piece
that BPE can build is therefore kept with its path (`buildable_unused`).
"""
from __future__ import annotations

from converter.tokenizer.sentencepiece_model import NORMAL, UNUSED, USER_DEFINED, SentencePieceModel


class SentencePieceGraph:
    """Piece scores, user-defined symbols and, per piece, the merge that builds it."""

    def __init__(self, model: SentencePieceModel) -> None:
        mergeable = (NORMAL, USER_DEFINED, UNUSED)
        self._score = {p: s for p, s, t in zip(model.pieces, model.scores, model.types) if t in mergeable}
        self._unused = [model.pieces[i] for i in model.ids_of_type(UNUSED)]
        self._user: dict[str, list[str]] = {}
        for i in model.ids_of_type(USER_DEFINED):
            self._user.setdefault(model.pieces[i][0], []).append(model.pieces[i])
        for symbols in self._user.values():
            symbols.sort(key=len, reverse=True)
        self._built_by: dict[str, tuple[str, str] | None] = {}

    def _initial(self, text: str) -> tuple[list[str], list[bool]]:
        """Characters, with user-defined pieces matched longest-first as frozen symbols."""
        if not any(c in self._user for c in text):
            return list(text), [False] * len(text)
        symbols: list[str] = []
        frozen: list[bool] = []
        i = 0
        while i < len(text):
            match = next((u for u in self._user.get(text[i], ()) if text.startswith(u, i)), None)
            symbols.append(match or text[i])
            frozen.append(match is not None)
            i += len(match or text[i])
        return symbols, frozen

    def _run_bpe(self, token: str) -> None:
        """Encode `token` alone as SentencePiece does and record each merge on the way."""
        score = self._score
        symbols, frozen = self._initial(token)
        while len(symbols) > 1:
            best, at = None, -1
            for i, (left, right) in enumerate(zip(symbols, symbols[1:])):
                s = score.get(left + right)
                if s is not None and (best is None or s > best) and not (frozen[i] or frozen[i + 1]):
                    best, at = s, i
            if best is None:
                break
            pair = (symbols[at], symbols[at + 1])
            symbols[at:at + 2] = [pair[0] + pair[1]]
            del frozen[at + 1]
            self._built_by.setdefault(symbols[at], pair)
        self._built_by.setdefault(token, None)

    def parts(self, token: str, kept: set[str]) -> tuple[str, ...]:
        """The two pieces SentencePiece merges into `token` (empty for a base symbol)."""
        if token not in self._score or len(token) < 2:
            return ()
        if token not in self._built_by:
            splits = [(token[:i], token[i:]) for i in range(1, len(token))]
            if all(a in kept and b in kept for a, b in splits if a in self._score and b in self._score):
                return ()
            self._run_bpe(token)
        return self._built_by[token] or ()

    def buildable_unused(self) -> list[str]:
        """UNUSED pieces that BPE can build (and would then resegment)."""
        out = []
        for piece in self._unused:
            if piece not in self._built_by:
                self._run_bpe(piece)
            if self._built_by[piece] is not None:
                out.append(piece)
        return out
