"""`compact-convert IN OUT`: the whole job (score, plan, export) as one command.

With `--plan` it exports that plan; without one it scores the model on the calibration text and
derives a plan from the budget flags (converter.oneshot). `compact-convert export` is the
same command, for symmetry with the other stage subcommands.
"""
from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from converter import __version__
from converter.errors import ConvertError
from converter.pipeline import export
from converter.settle import settle_plan
from converter.source import Source, open_source
from exporters.registry import EXPORTERS
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.report import ReportContext
from exporters.options import DEFAULT_MAX_SHARD_SIZE, ExportOptions, parse_size
from exporters.staging import check_output_location

PRESENTATION_FLAGS = ("--progress", "--no-progress", "--force", "--no-force")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "compact-convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Prune rare vocabulary and weak FFN channels from a Hugging Face model and export it.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder (config.json + safetensors)")
    p.add_argument("output", type=Path, metavar="OUT", help="output folder (must not exist or be empty)")
    p.add_argument("--format", choices=sorted(EXPORTERS), default="hf", help="output format (default: hf)")
    p.add_argument("--plan", type=Path, help="prune_plan.json giving the kept token ids and FFN channels")
    budget = p.add_argument_group("budget (without --plan: score the model and plan from these)")
    budget.add_argument("--calib", type=Path, action="append", metavar="PATH",
                        help="calibration text (.txt, .jsonl or a folder); USE YOUR OWN DOMAIN TEXT, it matters most")
    budget.add_argument("--target-ratio", type=float, help="fraction of parameters to remove, e.g. 0.35")
    budget.add_argument("--vocab-size", type=int, help="exact vocabulary size to keep")
    budget.add_argument("--intermediate-size", type=int, help="exact FFN intermediate size to keep")
    budget.add_argument("--method", choices=["compact", "act2", "magnitude", "random"], default="compact",
                        help="channel criterion (default compact; the others are baselines)")
    budget.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="where to score")
    budget.add_argument("--text-field", default="text", help="JSONL field holding the calibration text (default text)")
    budget.add_argument("--calib-tokens", type=int, default=128 * 512,
                        help="tokens of the activation sample (default 65536); token counts use all the text")
    budget.add_argument("--ffn-multiple", type=int, default=32, help="round the FFN size to this multiple (default 32)")
    budget.add_argument("--scores", type=Path, help="scores.safetensors from `compact-convert score` (skips scoring)")
    budget.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False,
                        help="refit the kept down_proj columns by least squares on the calibration activations "
                             "(training-free; recovers much of an FFN cut's loss; scoring also records the "
                             "layers x ffn^2 Gram matrices it needs)")
    out = p.add_argument_group("output")
    out.add_argument("--outtype", help="weight type: hf keeps the source dtype; gguf f32|f16|bf16|q8_0|q4_0|...; "
                     "onnx fp32|fp16|int8|int4")
    out.add_argument("--pre", help="GGUF pre-tokenizer name, overriding the one derived from the source tokenizer")
    out.add_argument("--int4-block-size", type=int, default=32, help="block size of ONNX int4 weights")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_SIZE,
                   help="largest safetensors shard for --format hf, e.g. 5GB (default) or 500MB")
    p.add_argument("--keep-reserved", action=argparse.BooleanOptionalAction, default=False,
                   help="keep unused reserved special tokens such as <|reserved_special_token_N|>")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="replace a non-empty OUT")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and write nothing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    p.add_argument("--version", action="version", version=f"compact-convert {__version__}")
    return p


def _dry_run(args: argparse.Namespace, source: Source, plan: PrunePlan) -> None:
    plan, _ = settle_plan(source, plan, args.keep_reserved)
    s = PrunedCheckpoint(source.checkpoint, source.spec, plan).summary()
    print(f"model      {source.spec.architecture} ({source.spec.family}), {s['tensors']} tensors")
    print(f"vocab      {s['vocab_before']} -> {s['vocab_after']}")
    print(f"ffn        {s['ffn_before']} -> {s['ffn_after']}")
    print(f"params     {s['params_before']:,} -> {s['params_after']:,} "
          f"({100 * (1 - s['params_after'] / s['params_before']):.1f}% fewer)")
    print(f"bytes      {s['bytes_before']:,} -> {s['bytes_after']:,}")
    print(f"would write {args.format} to {args.output} (dry run: nothing written)")


def _plan(args: argparse.Namespace, source: Source) -> tuple[PrunePlan, ReportContext]:
    """The plan to export, and the scores behind it (for the report) when they are at hand."""
    if args.plan is not None:
        plan, context = PrunePlan.load(args.plan), _plan_scores(args, source)
        if args.refit:
            if context.scores is None:
                raise ConvertError("--refit with --plan needs --scores (made with `compact-convert score --refit`)")
            from converter.score.refit_solver import fit_refit

            plan = fit_refit(source, context.scores, plan, scores_path=str(args.scores))
        return plan, context
    try:
        from converter.oneshot import plan_from_args
    except ModuleNotFoundError:
        raise ConvertError("no --plan given; pass a prune_plan.json") from None
    return plan_from_args(args, source)


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
    check_output_location(args.output, args.input, args.force)
    source = open_source(args.input)
    plan, context = _plan(args, source)
    if args.dry_run:
        _dry_run(args, source, plan)
        return 0
    options = ExportOptions(max_shard_size=args.max_shard_size, progress=args.progress, outtype=args.outtype,
                            pre_tokenizer=args.pre, int4_block_size=args.int4_block_size,
                            command_line=recorded_command(argv, args.output, prog))
    written = export(source, plan, args.output, args.format, options, force=args.force,
                     keep_reserved=args.keep_reserved, report=context)
    print(f"wrote {len(written)} files to {args.output}")
    return 0

