"""`compact-convert score IN -o scores.safetensors --calib TEXT`: count tokens and score FFN channels.

Runs on a GPU (bf16) or the CPU, layer by layer when the model does not fit, and under torchrun
(each rank a slice of the corpus, results all-reduced, rank 0 writes). The output is additive:
`merge-scores` sums files scored on disjoint shards that share a layout (`--layout-from`).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from converter.commands.output_file import check_output_file
from converter.errors import ConvertError
from converter.source import open_source
from converter.score.scorer import ScoreOptions, dist_info, score
from converter.score.corpus import open_corpus
from converter.oneshot import warn_default_corpus
from converter.score.scores import Scores


def add_corpus_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--calib", type=Path, action="append", metavar="PATH",
                       help="calibration text: .txt, .jsonl or a folder of them, repeatable. USE TEXT OF YOUR OWN "
                       "DOMAIN: it decides which tokens survive (default: Python's docs, with a warning)")
    group.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    group.add_argument("--calib-tokens", type=int, default=ScoreOptions.calib_tokens,
                       help="tokens of the activation sample (default 65536 = 128 x 512); counts use all the text")
    group.add_argument("--predict-tokens", type=int, default=ScoreOptions.predict_tokens,
                       help="positions of that sample whose next-token probabilities rank the tokens your text never "
                       "shows (default 4096; 0: rank them by the tokenizer's prior alone)")
    group.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="where to score")
    group.add_argument("--layer-by-layer", action=argparse.BooleanOptionalAction, default=None,
                       help="load one decoder layer at a time (default: only when the model does not fit)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Count tokens and score FFN channels on calibration text.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder")
    p.add_argument("-o", "--output", type=Path, default=Path("scores.safetensors"), help="scores file to write")
    add_corpus_args(p.add_argument_group("calibration"))
    p.add_argument("--seq-len", type=int, default=ScoreOptions.seq_len, help="tokens per scored sequence")
    p.add_argument("--batch-tokens", type=int, default=ScoreOptions.batch_tokens, help="tokens per forward batch")
    p.add_argument("--heldout-tokens", type=int, default=ScoreOptions.heldout_tokens,
                   help="held-out calibration tokens kept for choosing a split")
    p.add_argument("--layout-from", type=Path, metavar="SCORES",
                   help="reuse this scores file's bucket layout so the results merge with it")
    p.add_argument("--counts-only", action="store_true", help="count tokens only (no forward passes)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False,
                   help="also record the activation Gram matrices (layers x ffn^2) that `plan --refit` needs")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    return p


def _init_distributed(device: str) -> bool:
    """Join the torchrun group if launched by torchrun; returns whether this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return True


def _at_least(value: int, minimum: int, flag: str) -> None:
    if value < minimum:
        what = "a positive number" if minimum == 1 else f"{minimum} or more"
        raise ConvertError(f"{flag} must be {what}, got {value}")


def run(argv: Sequence[str], prog: str = "compact-convert score") -> int:
    args = build_parser(prog).parse_args(argv)
    for value, minimum, flag in ((args.calib_tokens, 1, "--calib-tokens"), (args.seq_len, 1, "--seq-len"),
                                 (args.batch_tokens, 1, "--batch-tokens"), (args.heldout_tokens, 0, "--heldout-tokens"),
                                 (args.predict_tokens, 0, "--predict-tokens")):
        _at_least(value, minimum, flag)
    check_output_file(args.output, args.force)
    source = open_source(args.input)
    corpus = open_corpus(args.calib, args.text_field)
    layout = None
    if args.layout_from is not None:
        base = Scores.load(args.layout_from)
        dims = source.spec.dims
        base.check_model(source.checkpoint.fingerprint(), dims.vocab, dims.layers, dims.ffn, args.layout_from)
        layout = base.layout
    started = _init_distributed(args.device)
    try:
        rank, world = dist_info()
        if corpus.is_default and rank == 0:
            warn_default_corpus()
        options = ScoreOptions(calib_tokens=args.calib_tokens, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
                               heldout_tokens=args.heldout_tokens, device=args.device, layerwise=args.layer_by_layer,
                               counts_only=args.counts_only, progress=args.progress, gram=args.refit,
                               predict_tokens=args.predict_tokens)
        scores = score(source, corpus, options, layout)
        if rank == 0:
            scores.save(args.output)
            print(f"wrote {args.output}: {scores.describe()}" + (f" ({world} ranks)" if world > 1 else ""))
        if world > 1:
            torch.distributed.barrier()
    finally:
        if started:
            torch.distributed.destroy_process_group()
    return 0
