"""`compact-convert IN OUT`: the whole job (score, plan, export) as one command.

With `--plan` it exports that plan; without one it scores the model on the calibration text and
derives a plan from the budget flags (converter.oneshot). `compact-convert export` is the
same command, for symmetry with the other stage subcommands. Its scoring, budget and export flags
are generated from the fields of ScoreOptions, Budget and ExportOptions (converter.commands.flags),
the same declarations `score` and `plan` use, so every flag of a stage works here too.
"""
from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from converter import __version__
from converter.commands.flags import add_corpus_flags, add_options, add_progress_flag, options_from
from converter.errors import ConvertError
from converter.pipeline import export
from converter.row_grid import row_block
from converter.settle import settle_plan
from converter.source import Source, open_source
from exporters.registry import EXPORTERS, exporter_for
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.report import ReportContext
from converter.score.stage_options import Budget, ScoreOptions
from exporters.options import ExportOptions
from exporters.staging import check_output_location

PRESENTATION_FLAGS = ("--progress", "--no-progress", "--force", "--no-force")
# Flags of `score` the one-shot command does not take: it scores once, here, for channels and
# tokens alike (a layout to merge with and a counts-only file serve sharded scoring).
SCORE_ONLY = ("counts_only",)


def build_parser(prog: str = "compact-convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Prune rare vocabulary and weak FFN channels from a Hugging Face model and export it.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder (config.json + safetensors)")
    p.add_argument("output", type=Path, metavar="OUT", help="output folder (must not exist or be empty)")
    p.add_argument("--format", choices=sorted(EXPORTERS), default="hf", help="output format (default: hf)")
    p.add_argument("--plan", type=Path, help="prune_plan.json giving the kept token ids and FFN channels")
    add_options(p.add_argument_group(
        "budget", "without --plan, the model is scored (or --scores read) and a plan derived from these; "
        "--keep-reserved and --refit apply to a --plan too"), Budget)
    scoring = p.add_argument_group("scoring (without --plan or --scores)")
    scoring.add_argument("--scores", type=Path, help="scores.safetensors from `compact-convert score` (skips scoring)")
    add_corpus_flags(scoring)
    add_options(scoring, ScoreOptions, exclude=SCORE_ONLY)
    add_options(p.add_argument_group("output"), ExportOptions)
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="replace a non-empty OUT")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and write nothing")
    add_progress_flag(p)
    p.add_argument("--version", action="version", version=f"compact-convert {__version__}")
    return p


def _dry_run(args: argparse.Namespace, source: Source, plan: PrunePlan, keep_reserved: bool) -> None:
    plan, _ = settle_plan(source, plan, keep_reserved)
    s = PrunedCheckpoint(source.checkpoint, source.spec, plan).summary()
    print(f"model      {source.spec.architecture} ({source.spec.family}), {s['tensors']} tensors")
    print(f"vocab      {s['vocab_before']} -> {s['vocab_after']}")
    if s["ffn_before"]:  # a model whose MLPs are all experts has no dense FFN
        print(f"ffn        {s['ffn_before']} -> {s['ffn_after']}")
    if "moe_ffn_before" in s:
        print(f"experts    {source.spec.dims.experts} per layer, {s['moe_ffn_before']} -> {s['moe_ffn_after']} "
              "channels each")
    print(f"params     {s['params_before']:,} -> {s['params_after']:,} "
          f"({100 * (1 - s['params_after'] / s['params_before']):.1f}% fewer)")
    print(f"bytes      {s['bytes_before']:,} -> {s['bytes_after']:,}")
    print(f"would write {args.format} to {args.output} (dry run: nothing written)")


def _plan(args: argparse.Namespace, source: Source, budget: Budget,
          scoring: ScoreOptions) -> tuple[PrunePlan, ReportContext]:
    """The plan to export, and the scores behind it (for the report) when they are at hand."""
    if args.plan is not None:
        plan, context = PrunePlan.load(args.plan), _plan_scores(args, source)
        if budget.refit:
            if context.scores is None:
                raise ConvertError("--refit with --plan needs --scores (made with `compact-convert score --refit`)")
            from converter.score.refit_solver import fit_refit

            plan = fit_refit(source, context.scores, plan, ridge=budget.ridge, scores_path=str(args.scores))
        return plan, context
    try:
        from converter.oneshot import one_shot_plan
    except ModuleNotFoundError:
        raise ConvertError("no --plan given; pass a prune_plan.json") from None
    return one_shot_plan(source, budget, scoring, args.scores, args.calib, args.text_field)


def _plan_scores(args: argparse.Namespace, source: Source) -> ReportContext:
    """With --plan, --scores only feeds the report; they must still be this model's scores."""
    if args.scores is None:
        return ReportContext()
    from converter.score.scores import Scores

    scores = Scores.load(args.scores)
    dims = source.spec.dims
    scores.check_model(source.checkpoint.fingerprint(), dims.vocab, dims.layers, dims.ffn, args.scores)
    return ReportContext(scores, str(args.scores))


def recorded_command(argv: Sequence[str], output: Path, prog: str = "compact-convert") -> str:
    """The command line an output records about itself, the same wherever it was written.

    OUT is spelled `OUT` and flags that change nothing in the files (progress bars, --force) are
    left out, so two runs with the same input, plan and options write byte-identical files.
    """
    kept = ["OUT" if Path(arg) == output else arg for arg in argv if arg not in PRESENTATION_FLAGS]
    return shlex.join([*prog.split(), *kept])


def run(argv: Sequence[str], prog: str = "compact-convert") -> int:
    args = build_parser(prog).parse_args(argv)
    options = options_from(args, ExportOptions, progress=args.progress,
                           command_line=recorded_command(argv, args.output, prog))
    target = row_block(args.format, options.outtype, options.int4_block_size)
    budget = options_from(args, Budget, row_block=target.block, row_block_why=target.why)
    scoring = options_from(args, ScoreOptions, progress=args.progress)
    check_output_location(args.output, args.input, args.force)
    exporter_for(args.format)  # a missing optional package is named now, not after minutes of scoring
    source = open_source(args.input)
    plan, context = _plan(args, source, budget, scoring)
    if args.dry_run:
        _dry_run(args, source, plan, budget.keep_reserved)
        return 0
    written = export(source, plan, args.output, args.format, options, force=args.force,
                     keep_reserved=budget.keep_reserved, report=context)
    print(f"wrote {len(written)} files to {args.output}")
    return 0

