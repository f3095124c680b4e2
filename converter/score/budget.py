"""Parameter arithmetic: what a (vocabulary, FFN) split costs, and which splits meet a budget.

Parameters are counted from the checkpoint headers exactly as the exporters will write them:
every tensor with a `vocab` axis grows by its other dimensions per kept token, every tensor with
an `ffn` axis per kept channel, the rest is fixed. Tied embeddings are one tensor in the
checkpoint and so are counted once. A target ratio R asks for at most (1 - R) of the original
parameters; candidate splits spread the cut between vocabulary and FFN, from FFN-only to
vocabulary-only, so auto-split can measure which is best. Where FFN-only cannot meet the budget
(Gemma 3 at -50%: its FFN is a quarter of the model) the spread starts at the smallest vocabulary
cut that leaves room for one `multiple` of channels, so no candidate is wasted on infeasible shares.
A mixture-of-experts model adds a third size, the routed experts' width (`moe_ffn`: every tensor
with a `moe_ffn` axis, experts x 3 x hidden per channel); its `ffn` is the shared expert's (Qwen2-MoE)
or nothing. Auto-split trades vocabulary against the experts' width (`expert_knob`) and keeps the
shared expert whole: every token runs through it, where a routed expert sees top_k/experts of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from converter.arch import is_ignored_tensor
from converter.errors import ConvertError
from converter.source import Source


@dataclass(frozen=True)
class ParamModel:
    """params(vocab, ffn, moe) = fixed + per_token * vocab + per_channel * ffn + per_expert_channel * moe."""

    fixed: int
    per_token: int
    per_channel: int
    vocab: int
    ffn: int
    per_expert_channel: int = 0
    moe_ffn: int = 0

    @property
    def total(self) -> int:
        return self.params(self.vocab, self.ffn)

    def params(self, vocab: int, ffn: int, moe: int | None = None) -> int:
        """Parameters at these sizes; `moe` (the experts' width) defaults to the model's own."""
        moe = self.moe_ffn if moe is None else moe
        return self.fixed + self.per_token * vocab + self.per_channel * ffn + self.per_expert_channel * moe

    def expert_knob(self) -> ParamModel:
        """The same model with the experts' width as its `ffn` and the shared expert counted whole in `fixed`:
        what auto-split spreads the budget over for a mixture-of-experts model."""
        return ParamModel(self.fixed + self.per_channel * self.ffn, self.per_token, self.per_expert_channel,
                          self.vocab, self.moe_ffn)

    def ffn_for(self, vocab: int, budget: int, multiple: int) -> int:
        """The largest FFN size that fits the budget: the model's whole FFN, or a multiple of `multiple` below it."""
        room = (budget - self.fixed - self.per_token * vocab) // self.per_channel
        return self.ffn if room >= self.ffn else room // multiple * multiple

    def narrowest(self, multiple: int) -> int:
        """The narrowest FFN a plan on multiples of `multiple` keeps: one multiple, or the whole FFN if narrower."""
        return min(multiple, self.ffn)

    def arithmetic(self, vocab: int, ffn: int, moe: int | None = None) -> str:
        """The parameter arithmetic as a user reads it."""
        after = self.params(vocab, ffn, moe)
        if not self.moe_ffn:
            return (f"params = fixed {self.fixed:,} + {self.per_token:,} x vocab + {self.per_channel:,} x ffn; "
                    f"before {self.total:,} (vocab {self.vocab}, ffn {self.ffn}); after {after:,} (vocab {vocab}, "
                    f"ffn {ffn}); removed {self.total - after:,} = {100 * (1 - after / self.total):.2f}%")
        moe = self.moe_ffn if moe is None else moe
        shared = (f"{self.per_channel:,} x shared ffn + ", f", shared ffn {self.ffn}", f", shared ffn {ffn}") \
            if self.ffn else ("", "", "")
        return (f"params = fixed {self.fixed:,} + {self.per_token:,} x vocab + {shared[0]}{self.per_expert_channel:,} "
                f"x expert ffn; before {self.total:,} (vocab {self.vocab}{shared[1]}, expert ffn {self.moe_ffn}); "
                f"after {after:,} (vocab {vocab}{shared[2]}, expert ffn {moe}); removed {self.total - after:,} = "
                f"{100 * (1 - after / self.total):.2f}%")


def param_model(source: Source) -> ParamModel:
    fixed = per_token = per_channel = per_expert_channel = 0
    dims = source.spec.dims
    for info in source.checkpoint:
        if is_ignored_tensor(info.name):
            continue
        numel = math.prod(info.shape)
        slot = source.spec.slot(info.name)
        if slot is not None and slot.axis("vocab") is not None:
            per_token += numel // dims.vocab
        elif slot is not None and slot.axis("ffn") is not None:
            per_channel += numel // dims.ffn
        elif slot is not None and dims.moe_ffn and slot.axis("moe_ffn") is not None:
            per_expert_channel += numel // dims.moe_ffn
        else:
            fixed += numel
    return ParamModel(fixed, per_token, per_channel, dims.vocab, dims.ffn, per_expert_channel, dims.moe_ffn)


@dataclass(frozen=True)
class Split:
    """One way to meet a budget: a vocabulary target and the FFN size that fits beside it."""

    share: float
    vocab: int


def check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConvertError(f"--target-ratio must be between 0 and 1 (the fraction of parameters to remove), "
                           f"got {ratio}")


def budget_for(model: ParamModel, ratio: float) -> int:
    check_ratio(ratio)
    return math.floor((1 - ratio) * model.total)


def candidate_splits(model: ParamModel, ratio: float, min_vocab: int, multiple: int, count: int = 6) -> list[Split]:
    """Vocabulary targets spreading the cut from FFN-only (share 0) to vocabulary-heavy (share 1)."""
    budget = budget_for(model, ratio)
    cut = model.total - budget
    most_vocab_cut = (model.vocab - min_vocab) * model.per_token
    least_share, fewest_tokens_cut = 0.0, 0
    narrowest = model.narrowest(multiple)
    if model.per_token and cut > 0 and model.ffn_for(model.vocab, budget, multiple) < narrowest:
        fewest_tokens_cut = model.vocab - (budget - model.fixed - model.per_channel * narrowest) // model.per_token
        least_share = min(1.0, fewest_tokens_cut * model.per_token / cut)
    splits: list[Split] = []
    for k in range(count):
        share = least_share + (1 - least_share) * (k / (count - 1) if count > 1 else 0.0)
        vocab_cut = math.ceil(min(share * cut, most_vocab_cut) / model.per_token) if model.per_token else 0
        if k == 0 and fewest_tokens_cut:
            vocab_cut = min(fewest_tokens_cut, model.vocab - min_vocab)
        vocab = model.vocab - vocab_cut
        if share and vocab == model.vocab:
            continue
        if model.ffn_for(vocab, budget, multiple) < narrowest:
            continue
        if all(s.vocab != vocab for s in splits):
            splits.append(Split(share, vocab))
    if not splits:
        smallest = model.params(min_vocab, narrowest)
        raise ConvertError(f"--target-ratio {ratio} cannot be met: the smallest model this tokenizer and "
                           f"FFN multiple {multiple} allow has {smallest:,} parameters "
                           f"({100 * (1 - smallest / model.total):.1f}% removed)")
    return splits
