"""`compact-convert score IN -o scores.safetensors --calib TEXT`: count tokens and score FFN channels.

Runs on a GPU (bf16) or the CPU, layer by layer when the model does not fit, and under torchrun
(each rank a slice of the corpus, results all-reduced, rank 0 writes). The output is additive:
`merge-scores` sums files scored on disjoint shards that share a layout (`--layout-from`). The
flags come from ScoreOptions' fields (converter.commands.flags); torch and the scorer are imported
only once they are read, so `--help` and a bad flag answer at once, without torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from converter.commands.flags import add_corpus_flags, add_options, add_progress_flag, options_from
from converter.commands.output_file import check_output_file
from converter.score.stage_options import ScoreOptions


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Count tokens and score FFN channels on calibration text.")
    p.add_argument("input", type=Path, metavar="IN", help="Hugging Face model folder")
    p.add_argument("-o", "--output", type=Path, default=Path("scores.safetensors"), help="scores file to write")
    calibration = p.add_argument_group("calibration and scoring")
    add_corpus_flags(calibration)
    add_options(calibration, ScoreOptions)
    p.add_argument("--layout-from", type=Path, metavar="SCORES",
                   help="reuse this scores file's bucket layout so the results merge with it")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file")
    add_progress_flag(p)
    return p


def _init_distributed(device: str) -> bool:
    """Join the torchrun group if launched by torchrun; returns whether this call started it."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return True


def run(argv: Sequence[str], prog: str = "compact-convert score") -> int:
    args = build_parser(prog).parse_args(argv)
    options = options_from(args, ScoreOptions, progress=args.progress)
    check_output_file(args.output, args.force)
    import torch

    from converter.oneshot import warn_default_corpus
    from converter.score.corpus import open_corpus
    from converter.score.scorer import dist_info, score
    from converter.score.scores import Scores
    from converter.source import open_source

    source = open_source(args.input)
    corpus = open_corpus(args.calib, args.text_field)
    layout = None
    if args.layout_from is not None:
        base = Scores.load(args.layout_from)
        dims = source.spec.dims
        base.check_model(source.checkpoint.fingerprint(), dims.vocab, dims.layers, dims.ffn, args.layout_from)
        layout = base.layout
    started = _init_distributed(options.device)
    try:
        rank, world = dist_info()
        if corpus.is_default and rank == 0:
            warn_default_corpus()
        scores = score(source, corpus, options, layout)
        if rank == 0:
            scores.save(args.output)
            print(f"wrote {args.output}: {scores.describe()}" + (f" ({world} ranks)" if world > 1 else ""))
        if world > 1:
            torch.distributed.barrier()
    finally:
        if started:
            torch.distributed.destroy_process_group()
    if started:
        _leave_worker()
    return 0


def _leave_worker() -> None:
    """End a torchrun worker whose output is written without running C++ static destructors.

    On a loaded machine gloo's worker threads can still be alive when the interpreter finalises,
    and the process then aborts ("terminate called without an active exception"), which torchrun
    reports as a failed run although every rank finished. Exiting here skips that teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
