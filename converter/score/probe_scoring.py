"""Scoring's general-probe step: the dense model answers everyday prompts before the corpus is counted.

Runs on scoring's whole-mode ModelRunner (a layer-by-layer runner cannot decode, and the scores
then say why retention was not measured). The calib prompts' answers give `general_counts`
(their token counts) and `general_predicted` (the model's next-token probabilities summed over
every answer position, which ranks everyday tokens no answer happened to spell). The last
quarter of the calib prompts asked is set aside uncounted ("select"): auto-split judges general
use on those answers, since answers whose tokens the ranking was given would hide what a small
vocabulary drops. The held-out prompts' answers are kept for measuring retention and never
counted. Without --calib the calib answers, prompt included as the model saw it, are also
calibration documents, so the default sample is everyday chat in the model's own words. Greedy
answers are deterministic, so only rank 0 generates and the other ranks receive its record.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from converter.score.corpus import Document
from converter.score.engine import ModelRunner
from converter.score.general_probe import DEFAULT_BATCH_SIZE, cannot_generate, generate_answers, load_probe
from converter.score.probe_record import PROBE_ORIGIN, ProbeRecord
from converter.score.stage_options import ScoreOptions


def disabled_reason(options: ScoreOptions) -> str | None:
    """Why scoring with these options asks no probe prompts, or None when it does."""
    if options.counts_only:
        return "scored with --counts-only (no forward passes), so the dense model answered no general-probe prompts"
    if not options.probe_prompts and not options.probe_heldout:
        return "scored with --probe-prompts 0 and --probe-heldout 0, so no general-probe prompts were answered"
    return None


class _Predicted:
    """Sums softmax(logits) over the rows still answering: the model's own distribution on its answers."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.sums = torch.zeros(vocab, dtype=torch.float64)

    def __call__(self, logits: torch.Tensor, live: torch.Tensor) -> None:
        rows = logits[live.to(logits.device)].float()
        if rows.shape[0]:
            self.sums += torch.softmax(rows, dim=-1).sum(dim=0).double().cpu()[:self.vocab]


def answer_probe(runner: ModelRunner, tokenizer: Any, options: ScoreOptions, vocab: int) -> ProbeRecord | str:
    """The dense answers to the first probe_prompts calib and probe_heldout held-out prompts, or why not."""
    reason = cannot_generate(runner)
    if reason is not None:
        return reason
    new_tokens = options.probe_new_tokens
    if new_tokens is None:
        raise ValueError("the probe's sizes are unresolved: ScoreOptions.for_corpus fills them in")
    asked = load_probe("calib")[:options.probe_prompts]
    calib, select = asked[:len(asked) - len(asked) // 4], asked[len(asked) - len(asked) // 4:]
    heldout = load_probe("heldout")[:options.probe_heldout]
    predicted = _Predicted(vocab)
    first = generate_answers(runner, tokenizer, calib, new_tokens, DEFAULT_BATCH_SIZE,
                             observe=predicted) if calib else []
    second = generate_answers(runner, tokenizer, [*select, *heldout], new_tokens,
                              DEFAULT_BATCH_SIZE) if select or heldout else []
    counts = np.zeros(vocab, dtype=np.int64)
    for answer in first:
        counts += np.bincount(np.asarray(answer.answer_ids, dtype=np.int64), minlength=vocab)[:vocab]
    answers = [*first, *second]
    splits = ("calib",) * len(first) + ("select",) * len(select) + ("heldout",) * len(heldout)
    return ProbeRecord(tuple(a.prompt_id for a in answers), splits, tuple(tuple(a.answer_ids) for a in answers),
                       counts, predicted.sums.numpy() if first else None, new_tokens)


def probe_documents(record: ProbeRecord, tokenizer: Any) -> list[Document]:
    """The calib answers as calibration documents: the prompt as the model saw it, then its answer."""
    return [Document(a.prompt_text + a.answer_text, f"{PROBE_ORIGIN}[{a.prompt_id}]")
            for a in record.probe_answers(tokenizer, "calib")]


def run_probe(runner: ModelRunner | None, tokenizer: Any, options: ScoreOptions, vocab: int, rank: int,
              gather: Callable[[object], list[Any]]) -> tuple[ProbeRecord | None, str]:
    """(record, "") when the probe was answered, else (None, why not); rank 0's answers on every rank."""
    reason = disabled_reason(options)
    if reason is not None or runner is None:
        return None, reason or "no model runner"
    found = answer_probe(runner, tokenizer, options, vocab) if rank == 0 else None
    found = gather(found)[0]
    if isinstance(found, str):
        return None, found
    return found, ""
