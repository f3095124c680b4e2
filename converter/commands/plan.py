"""`compact-convert plan IN --scores S --target-ratio R -o prune_plan.json`: a plan from scores and a budget.

Needs the model folder (for the tokenizer keep-set rules, the parameter arithmetic and, with a
target ratio, the held-out evaluation that picks the split) but no calibration text: that is in
the scores file. The plan then exports anywhere with `compact-convert IN OUT --plan`.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from converter.commands.output_file import check_output_file
from converter.errors import ConvertError
from converter.source import open_source
from converter.score.autosplit import Budget, make_plan
from converter.score.budget import param_model
from converter.score.planner import METHODS, report
from converter.score.scores import Scores


def add_budget_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--target-ratio", type=float, help="fraction of parameters to remove, e.g. 0.35 (auto-split)")
    group.add_argument("--vocab-size", type=int,
                       help="vocabulary size to keep at most (fewer are requested so the tokenizer rules fit)")
    group.add_argument("--intermediate-size", type=int, help="exact FFN intermediate size to keep")
    group.add_argument("--method", choices=METHODS, default="compact",
                       help="channel criterion (default compact; act2, magnitude and random are baselines)")
    group.add_argument("--ffn-multiple", type=int, default=32, help="round the FFN size to this multiple (default 32)")
    group.add_argument("--focus", type=float, default=0.0,
                       help="extra weight on common tokens' activations, (mean count)^focus (default 0)")
    group.add_argument("--splits", type=int, default=6, help="vocab/FFN splits auto-split measures (default 6)")
    group.add_argument("--seed", type=int, default=0, help="seed of --method random")
    group.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False,
                       help="refit the kept down_proj columns by least squares on the calibration activations "
                            "(training-free; recovers much of an FFN cut's loss; needs scores made with --refit)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Derive a prune plan from a scores file and a budget.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder the scores were made for")
    p.add_argument("--scores", type=Path, required=True, help="scores.safetensors from `compact-convert score`")
    p.add_argument("-o", "--output", type=Path, default=Path("prune_plan.json"), help="plan file to write")
    add_budget_args(p.add_argument_group("budget"))
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="where auto-split evaluates")
    p.add_argument("--layer-by-layer", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate one decoder layer at a time (default: only when the model does not fit)")
    p.add_argument("--keep-reserved", action=argparse.BooleanOptionalAction, default=False,
                   help="keep unused reserved special tokens")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file")
    return p


def run(argv: Sequence[str], prog: str = "compact-convert plan") -> int:
    args = build_parser(prog).parse_args(argv)
    check_output_file(args.output, args.force)
    source = open_source(args.input)
    budget = Budget(vocab_size=args.vocab_size, intermediate_size=args.intermediate_size,
                    target_ratio=args.target_ratio, method=args.method, ffn_multiple=args.ffn_multiple,
                    focus=args.focus, seed=args.seed, splits=args.splits, keep_reserved=args.keep_reserved,
                    device=args.device, layerwise=args.layer_by_layer, refit=args.refit)
    dims = source.spec.dims
    budget.check(dims.vocab, dims.ffn)
    if args.splits < 1:
        raise ConvertError(f"--splits must be at least 1, got {args.splits}")
    scores = Scores.load(args.scores)
    plan = make_plan(source, scores, budget, str(args.scores))
    report(plan, param_model(source))
    plan.save(args.output)
    print("wrote " + " and ".join(str(p) for p in plan.files(args.output)))
    return 0
