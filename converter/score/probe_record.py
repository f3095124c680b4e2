"""The dense model's answers to the general probe, as a scores file stores them.

Scoring asks the dense model a calib and a held-out subset of the general probe
(converter.score.general_probe) and keeps its greedy answers, so a plan can be judged on
everyday chat without another generation: the calib answers count everyday tokens
(`general_counts`, and `general_predicted`, the model's own next-token probabilities summed over
every answer position), the "select" answers (the last quarter of the calib prompts asked, never
counted) judge auto-split candidates, and the held-out answers measure retention
(converter.score.plan_retention).
The answers depend only on the model and the probe options, never on the corpus shard, so a
merge keeps one copy and checks the others equal it. The record is torch-free: prompts are
rendered again from the shipped probe and the tokenizer's chat template when answers are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PROBE_ORIGIN = "builtin:general-probe"  # how a corpus made of the probe's answers (no --calib) is described
SPLIT_CODES = {"calib": 0, "heldout": 1, "select": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
TENSORS = ("probe_prompt_ids", "probe_splits", "probe_answer_ids", "probe_answer_offsets", "general_counts")


@dataclass(frozen=True)
class ProbeRecord:
    """Answers (dense token ids) to probe prompts, with their prompt ids and split, and calib token counts."""

    prompt_ids: tuple[int, ...]
    splits: tuple[str, ...]
    answers: tuple[tuple[int, ...], ...]
    general_counts: np.ndarray
    general_predicted: np.ndarray | None = None
    max_new_tokens: int = 0

    def prompts(self, split: str) -> int:
        return sum(1 for s in self.splits if s == split)

    def answer_tokens(self, split: str) -> int:
        return sum(len(a) for a, s in zip(self.answers, self.splits) if s == split)

    def same_answers(self, other: ProbeRecord) -> bool:
        return (self.prompt_ids, self.splits, self.answers) == (other.prompt_ids, other.splits, other.answers)

    def to_tensors(self) -> dict[str, np.ndarray]:
        offsets = np.zeros(len(self.answers) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(a) for a in self.answers])
        flat = np.asarray([t for a in self.answers for t in a], dtype=np.int32).reshape(-1)
        tensors: dict[str, np.ndarray] = {
            "probe_prompt_ids": np.asarray(self.prompt_ids, dtype=np.int32).reshape(-1),
            "probe_splits": np.asarray([SPLIT_CODES[s] for s in self.splits], dtype=np.int32).reshape(-1),
            # safetensors refuses empty tensors: an answer-less record stores one ignored token
            "probe_answer_ids": flat if flat.size else np.zeros(1, dtype=np.int32),
            "probe_answer_offsets": offsets,
            "general_counts": self.general_counts.astype(np.int64),
        }
        if not self.prompt_ids:
            tensors["probe_prompt_ids"] = np.full(1, -1, dtype=np.int32)
            tensors["probe_splits"] = np.full(1, -1, dtype=np.int32)
        if self.general_predicted is not None:
            tensors["general_predicted"] = self.general_predicted.astype(np.float64)
        return tensors

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], max_new_tokens: int = 0) -> ProbeRecord:
        """The record from a scores file's tensors (KeyError or ValueError when they are damaged)."""
        prompt_ids = [int(i) for i in t["probe_prompt_ids"].tolist() if int(i) >= 0]
        splits = [SPLIT_NAMES[int(s)] for s in t["probe_splits"].tolist()[:len(prompt_ids)]]
        offsets = t["probe_answer_offsets"].tolist()
        flat = t["probe_answer_ids"].tolist()
        if len(offsets) != len(prompt_ids) + 1 or len(splits) != len(prompt_ids):
            raise ValueError("probe answer offsets do not match the prompts")
        answers = tuple(tuple(int(x) for x in flat[a:b]) for a, b in zip(offsets, offsets[1:]))
        predicted = t.get("general_predicted")
        return cls(tuple(prompt_ids), tuple(splits), answers, t["general_counts"].astype(np.int64),
                   None if predicted is None else predicted.astype(np.float64), max_new_tokens)

    def probe_answers(self, tokenizer: Any, split: str) -> list[Any]:
        """ProbeAnswer objects of one split, the prompts rendered again through the tokenizer's template."""
        from converter.score.general_probe import ProbeAnswer, encode_prompt, format_prompt, load_probe

        prompts = {p.id: p for p in load_probe()}
        out = []
        for prompt_id, kind, answer in zip(self.prompt_ids, self.splits, self.answers):
            if kind != split:
                continue
            text = format_prompt(tokenizer, prompts[prompt_id].prompt)
            out.append(ProbeAnswer(prompt_id=prompt_id, prompt_text=text,
                                   prompt_ids=tuple(encode_prompt(tokenizer, text)), answer_ids=answer,
                                   answer_text=tokenizer.decode(list(answer), skip_special_tokens=True),
                                   stopped=len(answer) < self.max_new_tokens))
        return out
