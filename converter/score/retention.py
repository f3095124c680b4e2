"""Retention: how much of the dense model's everyday answers a pruned model can still say.

Two numbers, both on the dense model's own greedy answers to the general probe
(converter.score.general_probe). The dropped byte share is the fraction of the answers' UTF-8 bytes
that fall in tokens the plan drops: a pruned model has to spell those bytes from smaller pieces
it rarely saw, which is where "The capital of Fremance" came from. Answer bits per byte is the
teacher-forced NLL of the answer tokens only, the prompt given as context, in bits over the
answer's UTF-8 bytes; each model reads prompt and answer through its own tokenizer (a pruned
tokenizer splits a dropped word into several tokens), which bits per byte makes comparable
across vocabularies. The pruned/dense ratio of it says how much harder the answers became.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from converter.score.bpb import total_nll_bits
from converter.score.engine import ModelRunner
from converter.score.general_probe import ProbeAnswer, encode_prompt
from converter.tokenizer.bpe_json import mentions_type

NLL_BATCH = 8


@dataclass(frozen=True)
class Retention:
    """The dense answers' dropped byte share and the pruned/dense answer bits per byte."""

    dropped_share: float
    answer_bpb: float
    dense_answer_bpb: float
    ratio: float
    prompts: int
    answer_bytes: int

    @classmethod
    def of(cls, dropped_share: float, answer_bpb: float, dense_answer_bpb: float,
           answers: Sequence[ProbeAnswer]) -> Retention:
        ratio = answer_bpb / dense_answer_bpb if dense_answer_bpb > 0 else math.inf
        return cls(dropped_share=dropped_share, answer_bpb=answer_bpb, dense_answer_bpb=dense_answer_bpb,
                   ratio=ratio, prompts=len(answers), answer_bytes=answer_bytes(answers))

    def to_json(self) -> dict[str, Any]:
        return {"dropped_share": self.dropped_share, "answer_bpb": self.answer_bpb,
                "dense_answer_bpb": self.dense_answer_bpb, "ratio": self.ratio, "prompts": self.prompts,
                "answer_bytes": self.answer_bytes}


def answer_bytes(answers: Iterable[ProbeAnswer]) -> int:
    return sum(len(a.answer_text.encode("utf-8")) for a in answers)


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character map that byte-level BPE pieces are spelled in."""
    values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = values[:]
    shifted = [b for b in range(256) if b not in values]
    values += shifted
    chars += [256 + n for n in range(len(shifted))]
    return {chr(c): b for b, c in zip(values, chars)}



def token_byte_table(tokenizer: Any) -> list[bytes]:
    """The UTF-8 bytes each token id stands for in decoded text; special tokens stand for none.

    Byte-level BPE pieces are mapped back through the byte alphabet; SentencePiece-style pieces
    turn "▁" into a space and `<0xNN>` byte-fallback pieces into their byte.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = mentions_type(spec.get("decoder"), "ByteLevel")
    decoder = _byte_decoder()
    special = set(getattr(tokenizer, "all_special_ids", []))
    special.update(int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table: list[bytes] = []
    for index, piece in enumerate(pieces):
        if piece is None or index in special:
            table.append(b"")
        elif byte_level and all(c in decoder for c in piece):
            table.append(bytes(decoder[c] for c in piece))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table.append(bytes([int(piece[3:5], 16)]))
        else:
            table.append(piece.replace("\u2581", " ").encode("utf-8"))
    return table


def dropped_byte_share(answers: Iterable[ProbeAnswer], kept_ids: Iterable[int], token_bytes: Sequence[bytes]) -> float:
    """Share of the answers' bytes (their tokens' bytes, in the dense ids) that fall in tokens not kept."""
    kept = np.zeros(len(token_bytes), dtype=bool)
    kept[np.asarray(sorted(set(kept_ids)), dtype=np.int64)] = True
    total = dropped = 0
    for answer in answers:
        for token in answer.answer_ids:
            size = len(token_bytes[token])
            total += size
            if not kept[token]:
                dropped += size
    return dropped / total if total else 0.0


def retokenize(answers: Iterable[ProbeAnswer], tokenizer: Any) -> list[ProbeAnswer]:
    """The same prompt and answer texts in another tokenizer's ids (a pruned model reads them this way)."""
    out = []
    for a in answers:
        answer_ids = tokenizer(a.answer_text, add_special_tokens=False)["input_ids"]
        out.append(ProbeAnswer(prompt_id=a.prompt_id, prompt_text=a.prompt_text,
                               prompt_ids=tuple(encode_prompt(tokenizer, a.prompt_text)),
                               answer_ids=tuple(answer_ids), answer_text=a.answer_text, stopped=a.stopped))
    return out


@torch.inference_mode()
def causal_lm_answer_nll_bits(model: Any, answers: Sequence[ProbeAnswer], batch_size: int = NLL_BATCH) -> float:
    """Summed NLL in bits of every answer token under a transformers causal LM, its prompt as context."""
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(answers), batch_size):
        group = [a for a in answers[start:start + batch_size] if a.answer_ids]
        if not group:
            continue
        rows = [list(a.prompt_ids) + list(a.answer_ids) for a in group]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, a) in enumerate(zip(rows, group)):
            ids[i, :len(row)] = torch.as_tensor(row)
            mask[i, :len(row)] = 1
            scored[i, len(a.prompt_ids):len(row)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(2, ids[:, 1:, None].to(device))[..., 0]
        total += float(nll[scored[:, 1:].to(device)].double().sum())
    return total / math.log(2)


def runner_answer_nll_bits(runner: ModelRunner, answers: Sequence[ProbeAnswer], rows: Sequence[int] | None = None,
                           kept_channels: Sequence[Sequence[int]] | None = None,
                           ffn_maps: Sequence[np.ndarray] | None = None,
                           kept_experts: Sequence[Sequence[Sequence[int]]] | None = None) -> float:
    """The same on scoring's ModelRunner, for a candidate plan too (see converter.score.bpb.total_nll_bits).

    A causal model scores the prompt identically with or without the answer after it, so the
    answers' NLL is that of prompt + answer less that of the prompt alone.
    """
    kept = [a for a in answers if a.answer_ids]
    if not kept:
        return 0.0
    whole = [np.asarray(a.prompt_ids + a.answer_ids, dtype=np.int64) for a in kept]
    heads = [np.asarray(a.prompt_ids, dtype=np.int64) for a in kept]
    seq_len = max(w.size for w in whole)
    both = total_nll_bits(runner, whole, rows, kept_channels, seq_len=seq_len, ffn_maps=ffn_maps,
                          kept_experts=kept_experts)
    prompt = total_nll_bits(runner, heads, rows, kept_channels, seq_len=seq_len, ffn_maps=ffn_maps,
                            kept_experts=kept_experts)
    return both - prompt


def answer_bits_per_byte(model: Any, answers: Sequence[ProbeAnswer]) -> float:
    """Answer NLL in bits over the answers' UTF-8 bytes; answers must hold this model's own ids."""
    size = answer_bytes(answers)
    if size == 0:
        return 0.0
    if isinstance(model, ModelRunner):
        return runner_answer_nll_bits(model, answers) / size
    return causal_lm_answer_nll_bits(model, answers) / size
