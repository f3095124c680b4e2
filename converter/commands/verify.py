"""`compact-convert verify OUT [--reference IN] [--text FILE] [--retention-prompts N]`: check an export.

Prints one table row per check. Exit status 0 when every check that ran passed, 1 when a parity
check failed, 2 (through the CLI) for bad input such as a missing OUT or plan.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from converter.verify import verify
from converter.verify.retention_check import DEFAULT_NEW_TOKENS, DEFAULT_PROMPTS
from converter.verify.table import render


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Load an export (hf, gguf or onnx) in its own runtime and compare its tokenizer "
        "and logits with the pruned Hugging Face model.")
    p.add_argument("output", type=Path, metavar="OUT", help="the folder an export wrote")
    p.add_argument("--reference", type=Path, metavar="IN",
                   help="the source model folder; the pruned reference is rebuilt from it and OUT/prune_plan.json")
    p.add_argument("--text", type=Path, metavar="FILE",
                   help="UTF-8 text to score in bits per byte (OUT, and the dense IN with --reference)")
    p.add_argument("--retention-prompts", type=int, default=DEFAULT_PROMPTS, metavar="N",
                   help="with --reference: the dense IN answers the first N held-out everyday prompts of the general "
                   "probe, and the pruned reference is scored on those answers (dropped byte share, answer bits per "
                   f"byte against the dense model's); 0 skips it (default: {DEFAULT_PROMPTS})")
    p.add_argument("--retention-tokens", type=int, default=DEFAULT_NEW_TOKENS, metavar="N",
                   help=f"new tokens per dense answer for --retention-prompts (default: {DEFAULT_NEW_TOKENS})")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                   help="CPU threads for each runtime (default: up to 4)")
    return p


def run(argv: Sequence[str], prog: str = "compact-convert verify") -> int:
    args = build_parser(prog).parse_args(argv)
    verdict = verify(args.output, args.reference, args.text, max(1, args.threads), args.retention_prompts,
                     args.retention_tokens)
    out = verdict.output
    print(f"verify {out.folder}: {out.format} ({out.model.name}, {out.outtype}); reference: {verdict.reference}")
    print(render(verdict.checks))
    for check in verdict.checks:
        if check.detail:
            print(f"{check.name}: {check.detail}")
    failed = [c.name for c in verdict.checks if c.status == "FAIL"]
    skipped = [c.name for c in verdict.checks if c.status == "SKIP"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all checks passed" + (f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else ""))
    return 0
