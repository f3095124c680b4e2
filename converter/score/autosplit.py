"""A budget becomes a plan: exact sizes, or a target ratio with the split chosen by measurement.

With `--vocab-size`/`--intermediate-size` the plan keeps exactly those (the vocabulary as close
below the target as the tokenizer rules allow). With `--target-ratio` a handful of splits that
meet the budget, from FFN-only to vocabulary-heavy, are each simulated on the held-out
calibration text stored in the scores file and scored in bits per byte; the lowest wins, and
splits halfway to its neighbours are tried, `refine_rounds` times around the best so far, before
settling. The grid always holds both single-knob extremes (FFN-only and vocabulary-only, where
each meets the budget), so the chosen split is never worse than either on the held-out text. The held-out text never
entered the counts or the activation sample, so the choice is not tuned on what chose the tokens.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from converter.errors import ConvertError
from converter.source import Source
from converter.plan import PrunePlan
from converter.score.budget import ParamModel, Split, budget_for, candidate_splits, param_model
from converter.score.planner import VocabChoice, VocabFitter, build_plan
from converter.score.refit_solver import fit_refit, refit_map, require_gram
from converter.score.scores import Scores
from converter.score.stage_options import Budget
from converter.score.tokens import load_tokenizer


class SplitEvaluator:
    """Bits per byte of candidate plans on the held-out calibration text, simulated in memory."""

    def __init__(self, source: Source, scores: Scores, budget: Budget, scores_path: str = "scores") -> None:
        from converter.score.bpb import start_id, text_bytes  # torch: only when candidates are measured
        from converter.score.engine import ModelRunner, fits, pick_device

        if not scores.heldout:
            raise ConvertError("the scores hold no held-out text to choose a split on (the corpus is too small); "
                               "pass more --calib text, or exact --vocab-size and --intermediate-size")
        device = pick_device(budget.device)
        layerwise = budget.layerwise if budget.layerwise is not None else not fits(source, device)
        self.runner = ModelRunner(source, device, layerwise)
        self.source = source
        self.texts = scores.heldout_texts
        self.bytes = text_bytes(self.texts)
        self.seq_len = budget.eval_seq_len
        self.tokenizer = load_tokenizer(source.folder)
        self.first = start_id(self.tokenizer, dict(source.spec.config))
        self.gram = require_gram(scores, scores_path) if budget.refit else None
        self.ridge = budget.ridge

    def _maps(self, plan: PrunePlan) -> list[Any] | None:
        if self.gram is None:
            return None
        return [refit_map(self.gram[layer], kept, self.ridge) for layer, kept in enumerate(plan.kept_ffn_channels)]

    def bits_per_byte(self, plan: PrunePlan) -> float:
        from converter.score.bpb import eval_windows, total_nll_bits

        vocab = self.source.spec.dims.vocab
        maps = self._maps(plan)
        if plan.keeps_all_tokens(vocab):
            windows = eval_windows(self.tokenizer, self.texts, self.first, self.seq_len)
            bits = total_nll_bits(self.runner, windows, None, plan.kept_ffn_channels, seq_len=self.seq_len,
                                  ffn_maps=maps)
            return bits / self.bytes
        from converter.tokenizer import plan_tokenizer, write_tokenizer

        rewrite = plan_tokenizer(self.source.folder, plan.kept_token_ids, vocab_size=vocab)
        folder = tempfile.mkdtemp(prefix="compact-split-")
        try:
            out = Path(folder)
            write_tokenizer(self.source.folder, rewrite, out)
            config = dict(self.source.spec.config, vocab_size=len(rewrite.kept_ids))
            (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
            tokenizer = load_tokenizer(out)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        first = None if self.first is None else rewrite.old_to_new().get(self.first)
        windows = eval_windows(tokenizer, self.texts, first, self.seq_len)
        bits = total_nll_bits(self.runner, windows, rewrite.kept_ids, plan.kept_ffn_channels, seq_len=self.seq_len,
                              ffn_maps=maps)
        return bits / self.bytes


def _exact(source: Source, scores: Scores, budget: Budget, model: ParamModel, fitter: VocabFitter) -> PrunePlan:
    dims = source.spec.dims
    vocab = fitter.fit(budget.vocab_size if budget.vocab_size is not None else dims.vocab)
    ffn = budget.intermediate_size if budget.intermediate_size is not None else dims.ffn
    return build_plan(source, scores, vocab, ffn, budget.method, model, budget.focus, budget.seed,
                      {"budget": {"vocab_size": budget.vocab_size, "intermediate_size": budget.intermediate_size}})


def _candidate(source: Source, scores: Scores, budget: Budget, model: ParamModel, fitter: VocabFitter,
               split: Split, limit: int) -> PrunePlan | None:
    vocab: VocabChoice = fitter.fit(split.vocab)
    ffn = model.ffn_for(vocab.size, limit, budget.ffn_multiple)
    if ffn < budget.ffn_multiple:
        return None
    room = min(model.vocab, (limit - model.fixed - model.per_channel * ffn) // model.per_token)
    if vocab.size < room < model.vocab:
        vocab = fitter.fit(room)
    return build_plan(source, scores, vocab, ffn, budget.method, model, budget.focus, budget.seed,
                      {"budget": {"target_ratio": budget.target_ratio, "params_budget": limit,
                                  "ffn_multiple": budget.ffn_multiple, "vocab_share": round(split.share, 4)}})


def make_plan(source: Source, scores: Scores, budget: Budget, scores_path: str = "scores",
              log: Any = None) -> PrunePlan:
    """The plan for `budget`, from scores made for this very model; with `budget.refit`, refitted."""
    dims = source.spec.dims
    scores.check_model(source.checkpoint.fingerprint(), dims.vocab, dims.layers, dims.ffn, scores_path)
    budget.check(dims.vocab, dims.ffn)
    if budget.refit:
        require_gram(scores, scores_path)
    plan = _choose(source, scores, budget, scores_path, log or sys.stderr)
    return fit_refit(source, scores, plan, budget.ridge, scores_path) if budget.refit else plan


def _choose(source: Source, scores: Scores, budget: Budget, scores_path: str, log: Any) -> PrunePlan:
    model = param_model(source)
    fitter = VocabFitter(source, scores, budget.keep_reserved)
    if budget.target_ratio is None:
        return _exact(source, scores, budget, model, fitter)
    limit = budget_for(model, budget.target_ratio)
    splits = candidate_splits(model, budget.target_ratio, fitter.minimum(), budget.ffn_multiple, budget.splits)
    plans: dict[int, tuple[Split, PrunePlan]] = {}
    for split in splits:
        plan = _candidate(source, scores, budget, model, fitter, split, limit)
        if plan is not None:
            plans.setdefault(plan.vocab_size, (split, plan))
    if not plans:
        raise ConvertError(f"--target-ratio {budget.target_ratio} cannot be met with --ffn-multiple "
                           f"{budget.ffn_multiple}")
    if len(plans) == 1:
        only = next(iter(plans.values()))[1]
        return replace(only, metadata={**only.metadata, "auto_split": [
            {"vocab": only.vocab_size, "ffn": only.intermediate_size, "bits_per_byte": None}]})
    evaluator = SplitEvaluator(source, scores, budget, scores_path)
    measured: dict[int, tuple[float, Split, PrunePlan]] = {}

    def measure(split: Split, plan: PrunePlan) -> None:
        bpb = evaluator.bits_per_byte(plan)
        measured[plan.vocab_size] = (bpb, split, plan)
        print(f"split      vocab {plan.vocab_size:>7} ffn {plan.intermediate_size:>6}: {bpb:.4f} bits/byte on "
              "held-out calibration text", file=log)

    for split, plan in plans.values():
        measure(split, plan)
    for _ in range(budget.refine_rounds):
        ranked = sorted(measured.values(), key=lambda m: m[1].share)
        best = min(range(len(ranked)), key=lambda i: ranked[i][0])
        added = False
        for neighbour in (best - 1, best + 1):
            if 0 <= neighbour < len(ranked):
                share = (ranked[best][1].share + ranked[neighbour][1].share) / 2
                vocab = round((ranked[best][1].vocab + ranked[neighbour][1].vocab) / 2)
                plan = _candidate(source, scores, budget, model, fitter, Split(share, vocab), limit)
                if plan is not None and plan.vocab_size not in measured:
                    measure(Split(share, vocab), plan)
                    added = True
        if not added:
            break
    bpb, split, plan = min(measured.values(), key=lambda m: m[0])
    table = [{"vocab": p.vocab_size, "ffn": p.intermediate_size, "bits_per_byte": round(b, 5)}
             for b, _, p in sorted(measured.values(), key=lambda m: m[1].share)]
    return PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, plan.source_fingerprint,
                     {**plan.metadata, "auto_split": table, "heldout_bits_per_byte": round(bpb, 5)})
