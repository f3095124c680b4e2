"""Domain cost against general retention over --general-weight: the frontier of issue 24.

A user who calibrates on domain text trades what the model keeps outside it for what it keeps
inside; `--general-weight` sets the trade. This measures it: the model is scored once on
in-domain licence prose (tools.eval_quality's disjoint split; with --refit also the down_proj Gram
matrices), then every budget is planned at every weight (auto-split), with and without the refit,
and each plan is exported to a Hugging Face folder and read back with stock transformers for its
held-out domain bits per byte. General retention is the plan's own, measured at plan time on the
probe's held-out answers (never counted): the share of the dense answers' bytes in dropped tokens
and the pruned/dense answer bits per byte. Ends with a markdown table and, with --plot, the
frontier (domain cost against answer bits-per-byte ratio, one line per budget and refit).

    python -m tools.eval_frontier [--model smollm2|gemma|DIR] [--ratios 0.2 0.35] [--weights 0 0.3 0.5]
        [--refit [--refit-only]] [--scores-dir D] [--markdown OUT.md] [--plot OUT.png] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from converter.score.autosplit import Budget, make_plan
from converter.score.bpb import text_bytes
from converter.score.corpus import open_corpus
from converter.score.stage_options import DEFAULT_GENERAL_WEIGHT, ScoreOptions
from converter.source import open_source
from tools.eval_quality import (cached_scores, exported_bpb, hf_bits_per_byte, licence_calibration_file,
                                model_folder, split_domain)


def measure_plan(source: Any, scores: Any, budget: Budget, texts: list[str], seq_len: int, work: Path,
                 dense: float) -> dict[str, Any]:
    """One auto-split plan at one weight: its split, domain cost and plan-time retention."""
    t = time.time()
    plan = make_plan(source, scores, budget, "in-domain", log=io.StringIO())
    bpb, params = exported_bpb(source, plan, texts, seq_len, work)
    retention = plan.metadata.get("retention") or {}
    return {"ratio": budget.target_ratio, "weight": budget.general_weight, "refit": budget.refit,
            "vocab": plan.vocab_size, "ffn": plan.intermediate_size, "params": params, "bpb": bpb,
            "domain_delta": bpb / dense - 1, "dropped_share": retention.get("dropped_share"),
            "answer_ratio": retention.get("ratio"), "prompts": retention.get("prompts"),
            "seconds": round(time.time() - t, 1)}


def markdown(rows: list[dict[str, Any]], model: str, dense: float) -> str:
    lines = [f"Domain cost and general retention over --general-weight, {model} (dense domain bits per byte "
             f"{dense:.4f}; retention on the probe's held-out answers).", "",
             "| target | refit | --general-weight | vocab | ffn | domain bpb | vs dense | answer bytes in dropped "
             "tokens | answer bpb vs dense |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| -{100 * r['ratio']:.0f}% | {'yes' if r['refit'] else 'no'} | {r['weight']:g}"
                     f"{' (default)' if r['weight'] == DEFAULT_GENERAL_WEIGHT else ''} | {r['vocab']} | {r['ffn']} "
                     f"| {r['bpb']:.4f} | {100 * r['domain_delta']:+.1f}% | {100 * (r['dropped_share'] or 0):.2f}% "
                     f"| {r['answer_ratio'] or float('nan'):.2f}x |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], model: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted({(r["ratio"], r["refit"]) for r in rows}):
        line = sorted((r for r in rows if (r["ratio"], r["refit"]) == key), key=lambda r: r["weight"])
        xs = [100 * r["domain_delta"] for r in line]
        ys = [r["answer_ratio"] for r in line]
        ax.plot(xs, ys, marker="o", label=f"-{100 * key[0]:.0f}%{' + refit' if key[1] else ''}")
        labels: dict[tuple[float, float], list[str]] = {}
        for r, x, y in zip(line, xs, ys):
            labels.setdefault((x, y), []).append(f"{r['weight']:g}")
        for (x, y), weights in labels.items():  # weights that chose the same plan share one label
            ax.annotate("w=" + ", ".join(weights), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("domain bits per byte vs dense (%)")
    ax.set_ylabel("general answers: bits per byte vs dense (x)")
    ax.set_title(f"{model}: --general-weight", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="smollm2 or gemma (the cached example builds), or an HF folder")
    p.add_argument("--calib-tokens", type=int, default=ScoreOptions.calib_tokens)
    p.add_argument("--seq-len", type=int, default=ScoreOptions.seq_len)
    p.add_argument("--eval-chars", type=int, default=24000)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.35])
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.15, DEFAULT_GENERAL_WEIGHT, 0.5, 0.7])
    p.add_argument("--refit", action="store_true", help="also plan every point with the down_proj refit")
    p.add_argument("--refit-only", action="store_true", help="with --refit: the refit rows alone")
    p.add_argument("--scores-dir", type=Path, help="cache the scores file here and reuse it")
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    folder = model_folder(args.model)
    source = open_source(folder)
    texts, calib = split_domain(args.eval_chars)
    work = Path(tempfile.mkdtemp(prefix="eval-frontier-"))
    rows: list[dict[str, Any]] = []
    try:
        calib_file = licence_calibration_file(work, calib)
        options = ScoreOptions(calib_tokens=args.calib_tokens, seq_len=args.seq_len, device="cpu", gram=args.refit)
        scores = cached_scores(source, open_corpus([calib_file]), options, "in-domain", args.scores_dir, calib_file)
        dense = hf_bits_per_byte(folder, texts, args.seq_len)
        print(f"model {folder}; domain eval {text_bytes(texts):,} bytes, dense {dense:.4f} bits/byte", flush=True)
        for ratio in args.ratios:
            for refit in ((True,) if args.refit_only else (False, True)) if args.refit else (False,):
                for weight in args.weights:
                    budget = replace(Budget(target_ratio=ratio, device="cpu", eval_seq_len=args.seq_len),
                                     general_weight=weight, refit=refit)
                    row = measure_plan(source, scores, budget, texts, args.seq_len, work, dense)
                    rows.append(row)
                    print(f"-{100 * ratio:.0f}% refit={refit!s:5} w={weight:<4g} vocab {row['vocab']:6} ffn "
                          f"{row['ffn']:5} domain {100 * row['domain_delta']:+5.1f}%  answers: "
                          f"{100 * (row['dropped_share'] or 0):5.2f}% bytes dropped, "
                          f"{row['answer_ratio'] or float('nan'):.2f}x dense ({row['seconds']}s)", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps({"dense": dense, "rows": rows}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(rows, folder.name, dense)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.plot:
        plot(rows, folder.name, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
