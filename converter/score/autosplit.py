"""A budget becomes a plan: exact sizes, or a target ratio with the split chosen by measurement.

With `--vocab-size`/`--intermediate-size` the plan keeps exactly those (the vocabulary as close
below the target as the tokenizer rules allow). With `--target-ratio` a handful of splits that
meet the budget, from FFN-only to vocabulary-heavy, are each simulated on the held-out
calibration text stored in the scores file and scored in bits per byte; the lowest wins, and
splits halfway to its neighbours are tried, `refine_rounds` times around the best so far, before
settling. The grid always holds both single-knob extremes (FFN-only and vocabulary-only, where
each meets the budget), so the chosen split is never worse than either on the held-out text. The held-out text never
entered the counts or the activation sample, so the choice is not tuned on what chose the tokens.
With --general-weight W > 0 and scores holding the general probe's answers, the objective is
(1 - W) x held-out bits per byte over the dense model's plus W x the uncounted "select" probe
answers' bits per byte over the dense model's; W = 0 keeps plain held-out bits per byte. Every candidate and the chosen
plan also get their retention on the held-out probe answers (converter.score.plan_retention) in
the plan's metadata, measured or not (with the reason). A mixture-of-experts model's splits trade the
vocabulary against every routed expert's width (`--moe-intermediate-size` for exact sizes), each
expert keeping its own best channels; the candidates are simulated with each expert's dropped
channels masked (converter.score.expert_mask), and the shared expert is kept whole
(converter.score.budget says why). `--refit` is refused for them: per-expert Gram matrices over
routed tokens are not collected.
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
from converter.score.plan_retention import missing_reason, not_measured
from converter.score.planner import VocabChoice, VocabFitter, build_plan
from converter.score.refit_solver import fit_refit, refit_map, require_gram
from converter.score.scores import Scores
from converter.score.split_objective import Measured, best, objectives, over_cap
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
        self.meter, self.reason = retention_meter(self.runner, self.tokenizer, scores)
        self.weight = budget.general_weight if self.meter is not None else 0.0
        self._dense_bpb: float | None = None

    def _maps(self, plan: PrunePlan) -> list[Any] | None:
        if self.gram is None:
            return None
        return [refit_map(self.gram[layer], kept, self.ridge) for layer, kept in enumerate(plan.kept_ffn_channels)]

    def bits_per_byte(self, plan: PrunePlan) -> float:
        return self._bpb(plan, *pruned_tokenizer(self.source, plan), self._maps(plan))

    def _bpb(self, plan: PrunePlan, tokenizer: Any, rows: tuple[int, ...] | None,
             maps: list[Any] | None) -> float:
        from converter.score.bpb import eval_windows, total_nll_bits

        if tokenizer is None:
            windows = eval_windows(self.tokenizer, self.texts, self.first, self.seq_len)
        else:
            first = None if self.first is None or rows is None else {old: new for new, old in
                                                                     enumerate(rows)}.get(self.first)
            windows = eval_windows(tokenizer, self.texts, first, self.seq_len)
        bits = total_nll_bits(self.runner, windows, rows, plan.kept_ffn_channels, seq_len=self.seq_len,
                              ffn_maps=maps, kept_experts=plan.kept_expert_channels)
        return bits / self.bytes

    def evaluate(self, plan: PrunePlan) -> tuple[Measured, dict[str, Any]]:
        """The costs split_objective weighs for a candidate plan, and its retention on the held-out answers."""
        tokenizer, rows = pruned_tokenizer(self.source, plan)
        maps = self._maps(plan)
        bpb = self._bpb(plan, tokenizer, rows, maps)
        if self.meter is None:
            return Measured(bpb, bpb), not_measured(self.reason)
        retention = self.meter.measure(plan, tokenizer, rows, maps)
        dropped = self.meter.select_dropped(plan)
        if self.weight <= 0:
            return Measured(bpb, bpb, None, dropped), retention
        if self._dense_bpb is None:
            dense = PrunePlan.identity(self.source.spec, plan.source_fingerprint)
            self._dense_bpb = self._bpb(dense, None, None, None)
        general = self.meter.general_ratio(plan, tokenizer, rows, maps)
        return Measured(bpb, bpb / self._dense_bpb, general, dropped), retention


def pruned_tokenizer(source: Source, plan: PrunePlan) -> tuple[Any, tuple[int, ...] | None]:
    """The plan's pruned tokenizer and its kept ids (new id -> old row), or (None, None) when all are kept."""
    vocab = source.spec.dims.vocab
    if plan.keeps_all_tokens(vocab):
        return None, None
    from converter.tokenizer import plan_tokenizer, write_tokenizer

    rewrite = plan_tokenizer(source.folder, plan.kept_token_ids, vocab_size=vocab)
    folder = tempfile.mkdtemp(prefix="compact-split-")
    try:
        out = Path(folder)
        write_tokenizer(source.folder, rewrite, out)
        config = dict(source.spec.config, vocab_size=len(rewrite.kept_ids))
        (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
        tokenizer = load_tokenizer(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return tokenizer, tuple(int(i) for i in rewrite.kept_ids)


def retention_meter(runner: Any, tokenizer: Any, scores: Scores) -> tuple[Any, str]:
    """(RetentionMeter, "") for scores with held-out probe answers, else (None, why retention is not measured)."""
    from converter.score.plan_retention import RetentionMeter

    reason = missing_reason(scores)
    if reason is not None:
        return None, reason
    return RetentionMeter(runner, tokenizer, scores), ""


def plan_retention(source: Source, scores: Scores, budget: Budget, plan: PrunePlan) -> dict[str, Any]:
    """Retention of one plan that no split evaluation measured (exact sizes, a single candidate)."""
    reason = missing_reason(scores)
    if reason is not None:
        return not_measured(reason)
    try:
        from converter.score.engine import ModelRunner, fits, pick_device
    except ImportError as exc:
        return not_measured(f"torch cannot be imported ({exc}), and measuring retention runs the model")
    device = pick_device(budget.device)
    layerwise = budget.layerwise if budget.layerwise is not None else not fits(source, device)
    meter, reason = retention_meter(ModelRunner(source, device, layerwise), load_tokenizer(source.folder), scores)
    if meter is None:
        return not_measured(reason)
    maps = None
    if budget.refit:
        gram = require_gram(scores, "scores")
        maps = [refit_map(gram[layer], kept, budget.ridge) for layer, kept in enumerate(plan.kept_ffn_channels)]
    tokenizer, rows = pruned_tokenizer(source, plan)
    return dict(meter.measure(plan, tokenizer, rows, maps))


def _exact(source: Source, scores: Scores, budget: Budget, model: ParamModel, fitter: VocabFitter) -> PrunePlan:
    dims = source.spec.dims
    vocab = fitter.fit(budget.vocab_size if budget.vocab_size is not None else dims.vocab)
    ffn = budget.intermediate_size if budget.intermediate_size is not None else dims.ffn
    moe = budget.moe_intermediate_size if budget.moe_intermediate_size is not None else dims.moe_ffn
    asked: dict[str, Any] = {"vocab_size": budget.vocab_size, "intermediate_size": budget.intermediate_size}
    if dims.experts:
        asked["moe_intermediate_size"] = budget.moe_intermediate_size
    return build_plan(source, scores, vocab, ffn, budget.method, model, budget.focus, budget.seed,
                      {"budget": asked}, moe)


def _candidate(source: Source, scores: Scores, budget: Budget, model: ParamModel, fitter: VocabFitter,
               split: Split, limit: int) -> PrunePlan | None:
    """The plan of one split: the vocabulary it names and the widest FFN beside it (for a mixture-of-experts
    model the experts' width, the shared expert kept whole: ParamModel.expert_knob)."""
    knob = _knob(source, model)
    vocab: VocabChoice = fitter.fit(split.vocab)
    width = knob.ffn_for(vocab.size, limit, budget.ffn_grid)
    if width < knob.narrowest(budget.ffn_grid):
        return None
    room = min(knob.vocab, (limit - knob.fixed - knob.per_channel * width) // knob.per_token)
    if vocab.size < room < knob.vocab:
        vocab = fitter.fit(room)
    moe = width if source.spec.dims.experts else 0
    return build_plan(source, scores, vocab, model.ffn if moe else width, budget.method, model, budget.focus,
                      budget.seed, {"budget": {"target_ratio": budget.target_ratio, "params_budget": limit,
                                               "ffn_multiple": budget.ffn_grid, **_grid_note(budget),
                                               "vocab_share": round(split.share, 4)}}, moe)


def _knob(source: Source, model: ParamModel) -> ParamModel:
    """The parameter model whose `ffn` auto-split sizes: the dense FFN, or a mixture of experts' width."""
    return model.expert_knob() if source.spec.dims.experts else model


def _row(plan: PrunePlan) -> dict[str, Any]:
    """A candidate's sizes in the auto-split table (the experts' width only for a mixture-of-experts plan)."""
    moe = {"moe_ffn": plan.moe_intermediate_size} if plan.kept_expert_channels else {}
    return {"vocab": plan.vocab_size, "ffn": plan.intermediate_size, **moe}


def _grid_note(budget: Budget) -> dict[str, Any]:
    """Why the FFN sizes sit on their grid, for the plan's metadata (nothing when only --ffn-multiple applies)."""
    if budget.row_block <= 1:
        return {}
    return {"row_block": budget.row_block, "row_block_why": budget.row_block_why}


def make_plan(source: Source, scores: Scores, budget: Budget, scores_path: str = "scores",
              log: Any = None) -> PrunePlan:
    """The plan for `budget`, from scores made for this very model; with `budget.refit`, refitted."""
    dims = source.spec.dims
    scores.check_model(source.checkpoint.fingerprint(), dims.vocab, dims.layers, dims.ffn, scores_path)
    budget.check(dims.vocab, dims.ffn, dims.moe_ffn)
    if budget.refit:
        require_gram(scores, scores_path)
    plan = _choose(source, scores, budget, scores_path, log or sys.stderr)
    return fit_refit(source, scores, plan, budget.ridge, scores_path) if budget.refit else plan


def _choose(source: Source, scores: Scores, budget: Budget, scores_path: str, log: Any) -> PrunePlan:
    model = param_model(source)
    fitter = VocabFitter(source, scores, budget.keep_reserved, budget.general_weight)
    if budget.target_ratio is None:
        exact = _exact(source, scores, budget, model, fitter)
        return replace(exact, metadata={**exact.metadata, "retention": plan_retention(source, scores, budget, exact)})
    limit = budget_for(model, budget.target_ratio)
    splits = candidate_splits(_knob(source, model), budget.target_ratio, fitter.minimum(), budget.ffn_grid,
                              budget.splits)
    plans: dict[int, tuple[Split, PrunePlan]] = {}
    for split in splits:
        plan = _candidate(source, scores, budget, model, fitter, split, limit)
        if plan is not None:
            plans.setdefault(plan.vocab_size, (split, plan))
    if not plans:
        raise ConvertError(f"--target-ratio {budget.target_ratio} cannot be met with FFN sizes on multiples of "
                           f"{budget.ffn_grid} (--ffn-multiple {budget.ffn_multiple}"
                           f"{'; ' + budget.row_block_why if budget.row_block > 1 else ''})")
    if len(plans) == 1:
        only = next(iter(plans.values()))[1]
        retention = plan_retention(source, scores, budget, only)
        return replace(only, metadata={**only.metadata, "retention": retention, "auto_split": [
            {**_row(only), "bits_per_byte": None, "retention": retention}]})
    evaluator = SplitEvaluator(source, scores, budget, scores_path)
    cap = budget.dropped_cap(scores) if evaluator.meter is not None else None
    measured: dict[int, tuple[Measured, Split, PrunePlan, dict[str, Any]]] = {}

    def measure(split: Split, plan: PrunePlan) -> None:
        costs, retention = evaluator.evaluate(plan)
        measured[plan.vocab_size] = (costs, split, plan, retention)
        kept = (f"; general answers {retention['ratio']:.2f}x dense, {100 * retention['dropped_share']:.2f}% of "
                "their bytes dropped") if retention.get("measured") else ""
        width = f" experts {plan.moe_intermediate_size:>6}" if plan.kept_expert_channels else ""
        print(f"split      vocab {plan.vocab_size:>7} ffn {plan.intermediate_size:>6}{width}: "
              f"{costs.bits_per_byte:.4f} "
              f"bits/byte on held-out calibration text{kept}", file=log)

    for split, plan in plans.values():
        measure(split, plan)
    for _ in range(budget.refine_rounds):
        ranked = sorted(measured.values(), key=lambda m: m[1].share)
        top = best([m[0] for m in ranked], evaluator.weight, cap)
        added = False
        for neighbour in (top - 1, top + 1):
            if 0 <= neighbour < len(ranked):
                share = (ranked[top][1].share + ranked[neighbour][1].share) / 2
                vocab = round((ranked[top][1].vocab + ranked[neighbour][1].vocab) / 2)
                plan = _candidate(source, scores, budget, model, fitter, Split(share, vocab), limit)
                if plan is not None and plan.vocab_size not in measured:
                    measure(Split(share, vocab), plan)
                    added = True
        if not added:
            break
    ranked = sorted(measured.values(), key=lambda m: m[1].share)
    costs = [m[0] for m in ranked]
    top = best(costs, evaluator.weight, cap)
    chosen, _, plan, retention = ranked[top]
    if over_cap(chosen, cap):
        print(f"note: no split keeps the general probe's dropped bytes within --max-dropped-share {cap:g}; "
              "chose the best of all", file=log)
    blended = evaluator.weight > 0
    objective = objectives(costs, evaluator.weight)
    table = [{**_row(p), "bits_per_byte": round(c.bits_per_byte, 5),
              **({"objective": round(o, 5)} if blended else {}),
              **({"select_dropped_share": round(c.dropped, 6)} if c.dropped is not None else {}),
              **({"over_cap": True} if over_cap(c, cap) else {}), "retention": r}
             for (c, _, p, r), o in zip(ranked, objective)]
    return PrunePlan(plan.kept_token_ids, plan.kept_ffn_channels, plan.source_fingerprint,
                     {**plan.metadata, "auto_split": table, "heldout_bits_per_byte": round(chosen.bits_per_byte, 5),
                      "general_weight": evaluator.weight, "max_dropped_share": cap, "retention": retention},
                     kept_expert_channels=plan.kept_expert_channels)
