"""`compact-convert plan IN --scores S --target-ratio R -o prune_plan.json`: a plan from scores and a budget.

Needs the model folder (for the tokenizer keep-set rules, the parameter arithmetic and, with a
target ratio, the held-out evaluation that picks the split) but no calibration text: that is in
the scores file. The plan then exports anywhere with `compact-convert IN OUT --plan`. The budget
flags come from Budget's fields (converter.commands.flags); `--outtype` (and `--int4-block-size`),
declared by ExportOptions, say which quantised rows the FFN sizes must fill whole blocks of
(converter.row_grid). Exact sizes need no torch; a target ratio imports it to measure the
candidate splits.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from converter.commands.flags import add_options, options_from
from converter.commands.output_file import check_output_file
from converter.row_grid import row_block
from converter.score.autosplit import make_plan
from converter.score.budget import param_model
from converter.score.planner import report
from converter.score.scores import Scores
from converter.score.stage_options import Budget
from converter.source import open_source
from exporters.options import ExportOptions

TARGET_FIELDS = ("outtype", "int4_block_size")  # ExportOptions' flags that fix the rows' quantisation block


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Derive a prune plan from a scores file and a budget.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder the scores were made for")
    p.add_argument("--scores", type=Path, required=True, help="scores.safetensors from `compact-convert score`")
    p.add_argument("-o", "--output", type=Path, default=Path("prune_plan.json"), help="plan file to write")
    add_options(p.add_argument_group("budget"), Budget)
    add_options(p.add_argument_group(
        "export target", "the out type the plan will be exported as: FFN sizes are then drawn on multiples of its "
        "weight rows' block too (256 for GGUF K-quants), so no tensor falls back to another type"),
        ExportOptions, exclude=[f.name for f in fields(ExportOptions) if f.name not in TARGET_FIELDS])
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file")
    return p


def run(argv: Sequence[str], prog: str = "compact-convert plan") -> int:
    args = build_parser(prog).parse_args(argv)
    export = options_from(args, ExportOptions)
    target = row_block(None, export.outtype, export.int4_block_size)
    budget = options_from(args, Budget, row_block=target.block, row_block_why=target.why)
    check_output_file(args.output, args.force)
    source = open_source(args.input)
    dims = source.spec.dims
    budget.check(dims.vocab, dims.ffn, dims.moe_ffn)
    scores = Scores.load(args.scores)
    plan = make_plan(source, scores, budget, str(args.scores))
    report(plan, param_model(source))
    plan.save(args.output)
    print("wrote " + " and ".join(str(p) for p in plan.files(args.output)))
    return 0
