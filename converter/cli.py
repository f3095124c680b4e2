"""The `compact-convert` command: a thin shell over converter.pipeline.

`compact-convert IN OUT --format hf --plan prune_plan.json` runs the whole job. Errors in the
user's input print as one line on stderr with exit status 2; Ctrl-C exits 130 after the staging
folder has been removed.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from converter import __version__
from converter.errors import ConvertError
from converter.pipeline import EXPORTERS, export, open_source, settle_plan
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from exporters.options import DEFAULT_MAX_SHARD_SIZE, ExportOptions, parse_size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compact-convert",
        description="Prune rare vocabulary and weak FFN channels from a Hugging Face model and export it.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder (config.json + safetensors)")
    p.add_argument("output", type=Path, metavar="OUT", help="output folder (must not exist or be empty)")
    p.add_argument("--format", choices=sorted(EXPORTERS), default="hf", help="output format (default: hf)")
    p.add_argument("--plan", type=Path, help="prune_plan.json giving the kept token ids and FFN channels")
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


def _dry_run(args: argparse.Namespace) -> None:
    source = open_source(args.input)
    plan, _ = settle_plan(source, PrunePlan.load(args.plan), args.keep_reserved)
    s = PrunedCheckpoint(source.checkpoint, source.spec, plan).summary()
    print(f"model      {source.spec.architecture} ({source.spec.family}), {s['tensors']} tensors")
    print(f"vocab      {s['vocab_before']} -> {s['vocab_after']}")
    print(f"ffn        {s['ffn_before']} -> {s['ffn_after']}")
    print(f"params     {s['params_before']:,} -> {s['params_after']:,} "
          f"({100 * (1 - s['params_after'] / s['params_before']):.1f}% fewer)")
    print(f"bytes      {s['bytes_before']:,} -> {s['bytes_after']:,}")
    print(f"would write {args.format} to {args.output} (dry run: nothing written)")


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.plan is None:
        raise ConvertError("no --plan given; pass a prune_plan.json (see README: 'Writing a plan')")
    if args.dry_run:
        _dry_run(args)
        return 0
    options = ExportOptions(max_shard_size=args.max_shard_size, progress=args.progress,
                            command_line=shlex.join(["compact-convert", *argv]))
    source = open_source(args.input)
    written = export(source, PrunePlan.load(args.plan), args.output, args.format, options, force=args.force,
                     keep_reserved=args.keep_reserved)
    print(f"wrote {len(written)} files to {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except ConvertError as exc:
        print(f"compact-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compact-convert: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
