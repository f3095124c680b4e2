"""`compact-convert merge-scores a.safetensors b.safetensors -o all.safetensors`: add shard scores.

Every input is read and checked (same model, same bucket layout) before anything is written.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from converter.commands.output_file import check_output_file
from converter.score.scores import merge


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Sum scores files made on disjoint corpus shards.")
    p.add_argument("inputs", type=Path, nargs="+", metavar="SCORES", help="scores files of the same model")
    p.add_argument("-o", "--output", type=Path, required=True, help="merged scores file to write")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file")
    return p


def run(argv: Sequence[str], prog: str = "compact-convert merge-scores") -> int:
    args = build_parser(prog).parse_args(argv)
    check_output_file(args.output, args.force)
    merged = merge(args.inputs)
    merged.save(args.output)
    print(f"wrote {args.output}: {merged.describe()}")
    return 0
