"""The checks verify runs, each returning one table row (status PASS, FAIL, SKIP or INFO).

Tokenizer parity compares token ids snippet by snippet and names the first mismatch; logit
parity compares full logit matrices over a prompt; bits per byte scores a user text with the
output's own runtime (and the dense source) so quality can be judged across vocabularies.
A check that cannot run returns SKIP with the reason and what to pass, never PASS.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from converter.verify.probe import PROBE_SNIPPETS, snippet_line
from converter.verify.tolerance import Tolerance


@dataclass(frozen=True)
class Check:
    """One row of the verify table."""

    name: str
    status: str
    result: str
    numbers: str = ""
    tolerance: str = ""
    detail: str = ""


class Tokenizes(Protocol):
    name: str

    def tokenize(self, text: str) -> list[int]: ...


class Scores(Protocol):
    name: str
    vocab_size: int

    def logits(self, ids: Sequence[int]) -> np.ndarray: ...


class ReferenceTokenizer(Tokenizes, Protocol):
    def decode(self, ids: list[int]) -> str: ...

    def pieces(self, ids: list[int]) -> list[str]: ...


def skip(name: str, reason: str) -> Check:
    return Check(name, "SKIP", reason)


def tokenizer_parity(subject: Tokenizes, reference: ReferenceTokenizer,
                     snippets: Sequence[str] = PROBE_SNIPPETS) -> Check:
    """Every probe snippet must tokenize to the same ids; the first mismatch is named by line and ids."""
    total = same = 0
    first: str | None = None
    where = ""
    for index, text in enumerate(snippets):
        got, want = subject.tokenize(text), reference.tokenize(text)
        total += len(want)
        if got == want:
            same += 1
            continue
        if first is None:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            line = snippet_line(index) + reference.decode(want[:at]).count("\n")
            where = f"probe line {line}, token {at}"
            first = (f"first mismatch at probe line {line} ({text.splitlines()[0][:40]!r}), token {at}: "
                     f"OUT ids {got[at:at + 4]} vs reference ids {want[at:at + 4]} "
                     f"(reference pieces {reference.pieces(want[at:at + 4])})")
    numbers = f"{same}/{len(snippets)} snippets identical, {total} tokens"
    if first is not None:
        return Check("tokenizer parity", "FAIL", f"{subject.name} differs at {where}", numbers, "identical ids",
                     first)
    return Check("tokenizer parity", "PASS", f"{subject.name} vs {reference.name}, built-in probe", numbers,
                 "identical ids")


def vocab_check(runtime: str, got: int, expected: dict[str, int]) -> Check:
    """The runtime's output width must equal what config.json and the reference say."""
    wrong = {where: n for where, n in expected.items() if n != got}
    numbers = ", ".join([f"{runtime} {got}", *(f"{w} {n}" for w, n in expected.items())])
    if wrong:
        return Check("loads, vocabulary", "FAIL", f"{runtime} loads but its vocabulary disagrees", numbers, "equal")
    return Check("loads, vocabulary", "PASS", f"loads in {runtime}", numbers, "equal")


def logit_parity(subject: Scores, reference: Scores, ids: Sequence[int], tolerance: Tolerance) -> Check:
    """max|a-b| / max|b| over every prompt position, and top-1 agreement, against the reference."""
    got, want = subject.logits(ids), reference.logits(ids)
    if got.shape != want.shape:
        return Check("logit parity", "FAIL", f"{subject.name} logits have shape {list(got.shape)}, the reference "
                     f"{list(want.shape)}", "", tolerance.describe())
    if not np.isfinite(got).all():
        return Check("logit parity", "FAIL", f"{subject.name} returned non-finite logits", "",
                     tolerance.describe())
    relative = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    ok = relative <= tolerance.relative and top1 >= tolerance.top1
    numbers = f"rel {relative:.2e}, top-1 {top1:.0%} of {len(ids)} positions"
    result = f"{subject.name} vs pruned reference (transformers, float32)"
    return Check("logit parity", "PASS" if ok else "FAIL", result, numbers, tolerance.describe())


def nll_bits(model: Scores, windows: Sequence[np.ndarray]) -> float:
    """Summed negative log-likelihood in bits of every window token after the first."""
    total = 0.0
    for window in windows:
        if window.size < 2:
            continue
        logits = model.logits(window.tolist())[:-1].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        total -= float(logp[np.arange(window.size - 1), window[1:]].sum())
    return total / math.log(2)
