"""Scoring throughput next to a plain forward pass over the same tokens, in the same run.

Windows of calibration text (the built-in corpus, or --calib) are batched once; then, interleaved
for --repeats rounds, the same batches run (rotating the order each round) through (1) stock
transformers (`from_pretrained`,
the base model's forward, no hooks), (2) the scoring engine without a probe, (3) the engine with
the act² probe that scoring uses and the predicted counts (next-token probabilities at every 16th
position, the product's default share), whole model, (4) the same layer by layer, and (5) the
probe that also sums the Gram matrices `--refit` needs (opt-in, so outside the target). It prints
tokens/s of each (best round) and the overhead of scoring over the plain forward; the target for
default scoring is at most 1.2x. Defaults to the cached SmolLM2-135M build and the CPU.

    python -m tools.bench_score [--model DIR] [--tokens 4096] [--seq-len 256] [--device cpu] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from converter.source import open_source
from converter.score.buckets import BucketLayout
from converter.score.scorer import Act2Probe, PredictedCounts, ScoreOptions, pad_batches
from converter.score.corpus import open_corpus
from converter.score.engine import ModelRunner, compute_dtype, pick_device
from converter.score.tokens import encode, load_tokenizer, rank_tokens, token_prior


def windows(folder: Path, calib: list[Path] | None, tokens: int, seq_len: int, vocab: int) -> list[np.ndarray]:
    tok = load_tokenizer(folder)
    out: list[np.ndarray] = []
    for doc in open_corpus(calib).documents():
        ids = encode(tok, [doc.text], vocab)[0]
        out += [ids[i:i + seq_len] for i in range(0, ids.size - seq_len + 1, seq_len)]
        if len(out) * seq_len >= tokens:
            break
    return out[:max(1, tokens // seq_len)]


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--calib", type=Path, action="append")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    folder = args.model
    if folder is None:
        from tools.smollm2_hf import cached_smollm2_hf

        folder = cached_smollm2_hf(Path("tests/.fixtures"))
    source = open_source(folder)
    dims = source.spec.dims
    device = pick_device(args.device)
    wins = windows(folder, args.calib, args.tokens, args.seq_len, dims.vocab)
    batches = pad_batches(wins, args.seq_len, args.batch_tokens)
    ids = [b for b, _ in batches]
    n_tokens = sum(int(m.sum()) for _, m in batches)
    layout = BucketLayout.from_ranking(rank_tokens(np.zeros(dims.vocab, dtype=np.int64),
                                                   token_prior(folder, dims.vocab)))
    bucket_of = torch.from_numpy(layout.token_bucket.astype(np.int64))
    bucket_batches = [torch.where(m, bucket_of[b], layout.buckets).reshape(-1).to(device) for b, m in batches]

    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(str(folder), dtype=compute_dtype(device),
                                                 local_files_only=True).model.to(device).eval()
    whole = ModelRunner(source, device, layerwise=False)
    layered = ModelRunner(source, device, layerwise=True)

    @torch.inference_mode()
    def run_stock() -> None:
        for b in ids:
            stock(input_ids=b.to(device), use_cache=False)

    def probe(gram: bool = False) -> Act2Probe:
        return Act2Probe(dims.layers, layout.buckets, dims.ffn, bucket_batches, device, gram=gram)

    stride = ScoreOptions().predict_stride
    masks = [m for _, m in batches]

    def scoring(runner: ModelRunner, gram: bool = False) -> Callable[[], None]:
        return lambda: runner.run(ids, probe(gram), on_output=PredictedCounts(runner, masks, stride))

    runs: dict[str, Callable[[], None]] = {
        "stock transformers forward": run_stock,
        "engine forward (no probe)": lambda: whole.run(ids),
        "scoring, whole model": scoring(whole),
        "scoring, layer by layer": scoring(layered),
        "scoring with --refit (Gram)": scoring(whole, gram=True),
    }
    best = {name: float("inf") for name in runs}
    names = list(runs)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            best[name] = min(best[name], timed(runs[name], device))
    print(f"model {folder} ({dims.layers} layers, ffn {dims.ffn}), device {device}, {compute_dtype(device)}, "
          f"{n_tokens} tokens in {len(ids)} batches, best of {args.repeats}")
    base = best["stock transformers forward"]
    for name, seconds in best.items():
        print(f"{name:30} {n_tokens / seconds:10.0f} tokens/s   {seconds / base:5.2f}x the plain forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
