"""verify's general-capability row: the report's retention figures, measured again from IN and the plan.

The report copies what planning measured; verify measures it anew, so a reader can check an
export without trusting its report. The dense IN model answers the first N of the general probe's
held-out everyday prompts (greedy, through its chat template; converter/score/general_probe.py),
then, as in tools/eval_general.py: the share of those answers' bytes that fall in tokens
OUT/prune_plan.json drops, and the teacher-forced bits per byte of the answers under the pruned
reference (rebuilt from IN, never OUT's own files) against the dense model's, each reading the
texts through its own tokenizer (converter/score/retention.py). Models load one at a time. The
row is informational, like bits per byte: no threshold would suit every budget. Defaults (16
prompts, 32 new tokens) keep it to seconds on a small model; both models' answer to the first
prompt ("What is the capital of France? ...") is printed beside it.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from converter.errors import ConvertError
from converter.verify.checks import Check

if TYPE_CHECKING:  # torch comes with it: imported when the row is measured, not for --help
    from converter.score.retention import Retention

NAME = "general retention"
DEFAULT_PROMPTS = 16
DEFAULT_NEW_TOKENS = 32
SHOWN_CHARS = 160


@dataclass(frozen=True)
class RetentionMeasure:
    """The retention figures and both models' answer to the first prompt."""

    retention: Retention
    prompt: str
    dense_answer: str
    pruned_answer: str


def check_counts(prompts: int, new_tokens: int) -> None:
    """Refuse counts the probe cannot honour, before any model is loaded."""
    if prompts < 0:
        raise ConvertError(f"--retention-prompts must be 0 (off) or more, not {prompts}")
    if new_tokens < 1:
        raise ConvertError(f"--retention-tokens must be at least 1, not {new_tokens}")


def measure_retention(source: Path, pruned: Path, kept_ids: tuple[int, ...], prompts: int = DEFAULT_PROMPTS,
                      new_tokens: int = DEFAULT_NEW_TOKENS, threads: int = 1) -> RetentionMeasure:
    """Dense answers from `source`, dropped byte share under `kept_ids`, answer bpb of `pruned` against `source`."""
    from converter.score.general_probe import DEFAULT_BATCH_SIZE, generate_answers, load_probe
    from converter.score.retention import (Retention, answer_bits_per_byte, dropped_byte_share, retokenize,
                                           token_byte_table)
    from converter.verify.runtime_hf import HfModel, HfTokenizer

    probe = load_probe("heldout")[:prompts]
    if not probe:
        raise ConvertError("the general probe has no held-out prompts")
    dense, dense_tok = HfModel(source, threads).model, HfTokenizer(source).tokenizer
    answers = generate_answers(dense, dense_tok, probe, new_tokens, min(len(probe), DEFAULT_BATCH_SIZE))
    dropped = dropped_byte_share(answers, kept_ids, token_byte_table(dense_tok))
    dense_bpb = answer_bits_per_byte(dense, retokenize(answers, dense_tok))
    del dense
    gc.collect()
    model, tokenizer = HfModel(pruned, threads).model, HfTokenizer(pruned).tokenizer
    pruned_bpb = answer_bits_per_byte(model, retokenize(answers, tokenizer))
    shown = generate_answers(model, tokenizer, probe[:1], new_tokens, 1)[0]
    return RetentionMeasure(Retention.of(dropped, pruned_bpb, dense_bpb, answers), probe[0].prompt,
                            answers[0].answer_text, shown.answer_text)


def retention_row(measure: RetentionMeasure) -> Check:
    """The informational table row, with both first answers as its detail line."""
    r = measure.retention
    finite = math.isfinite(r.ratio)
    times = f"{r.ratio:.2f}x" if finite else "unbounded times"
    result = (f"dense IN vs pruned reference, {r.prompts} held-out everyday prompts: {r.dropped_share:.2%} of the "
              f"dense answers' bytes in dropped tokens; the pruned model needs {times} the dense bits per byte")
    numbers = (f"dropped {100 * r.dropped_share:.4f}%, bpb {r.answer_bpb:.6f} / {r.dense_answer_bpb:.6f} = "
               + (f"{r.ratio:.4f}x" if finite else "unbounded"))
    detail = (f"{measure.prompt!r} dense: {_short(measure.dense_answer)}; pruned: {_short(measure.pruned_answer)}")
    return Check(NAME, "INFO", result, numbers, "", detail)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")
