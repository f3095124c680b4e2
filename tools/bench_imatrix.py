"""What the importance matrix from scoring buys a q4_k_m GGUF: held-out bits per byte with and without it.

For SmolLM2-135M and Gemma-3-270M (built from their PyPI wheels, tools/smollm2_hf and
tools/gemma3_hf), scores the model once on in-domain calibration text (licence paragraphs, the
split of tools/eval_quality, joined into documents of about 4000 characters so that calibration
windows are full), then exports q4_k_m GGUFs of the dense model (identity plan) and of
a pruned plan (explicit vocabulary and FFN sizes, the FFN width on the K-quant grid of 256), each
once with the scores' importance matrix (what the product does) and once without. Every GGUF is
measured by llama.cpp (the installed binding) on the held-out evaluation paragraphs, tokenized
by the export's own tokenizer in windows that begin with the start token, exactly as
tools/eval_quality measures HF folders: bits per byte = total NLL in bits over UTF-8 bytes.
The f16 export of each plan is measured too, as the ceiling the quantisation falls from
(--no-f16 skips it). Scores are kept in the work folder and reused.

    python -m tools.bench_imatrix [--models smollm2 gemma] [--work /tmp/bench-imatrix] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from converter.pipeline import export
from converter.plan import PrunePlan
from converter.score.autosplit import Budget, make_plan
from converter.score.bpb import eval_windows, start_id, text_bytes
from converter.score.corpus import open_corpus
from converter.score.scorer import score
from converter.score.scores import Scores
from converter.score.stage_options import ScoreOptions
from converter.score.tokens import load_tokenizer
from converter.source import open_source
from exporters.options import ExportOptions
from tools.eval_quality import model_folder, split_domain

# Pruned sizes: about a third of the parameters off, the FFN width a multiple of 256.
CUTS = {"smollm2": Budget(vocab_size=12000, intermediate_size=1024, device="cpu"),
        "gemma": Budget(vocab_size=65536, intermediate_size=1536, device="cpu")}


def gguf_bits_per_byte(folder: Path, texts: list[str], seq_len: int, threads: int) -> float:
    """Bits per byte of the folder's GGUF under llama.cpp, on windows from the folder's own tokenizer."""
    import llama_cpp

    gguf = next(p for p in folder.glob("*.gguf") if p.name != "imatrix.gguf")
    tok = load_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    windows = eval_windows(tok, texts, start_id(tok, config), seq_len)
    llm = llama_cpp.Llama(str(gguf), n_ctx=seq_len, n_batch=seq_len, n_ubatch=seq_len, logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    total = 0.0
    for window in windows:
        ids = [int(t) for t in window]
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[:len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
        total += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
    del llm
    return total / math.log(2) / text_bytes(texts)


def documents(paragraphs: list[str], chars: int = 4000) -> list[str]:
    """Paragraphs joined into documents of about `chars` characters, so calibration windows are full."""
    docs, current = [], ""
    for para in paragraphs:
        current = f"{current}\n\n{para}" if current else para
        if len(current) >= chars:
            docs.append(current)
            current = ""
    return docs + ([current] if current else [])


def measure(name: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    source = open_source(model_folder(name))
    texts, calib = split_domain(args.eval_chars)
    calib_file = work / f"{name}-calib.jsonl"
    calib_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents(calib)), encoding="utf-8")
    options = ScoreOptions(calib_tokens=args.calib_tokens, seq_len=512, device="cpu", probe_prompts=0,
                           probe_heldout=0, progress=False)
    cached = work / f"{name}-scores.safetensors"
    started = time.time()
    if cached.is_file():
        scores = Scores.load(cached)
    else:
        scores = score(source, open_corpus([calib_file]), options)
        scores.save(cached)
    print(f"{name}: scored {scores.describe()} in {time.time() - started:.0f}s", flush=True)
    plans = {"dense": PrunePlan.identity(source.spec, source.checkpoint.fingerprint()),
             "pruned": make_plan(source, scores, CUTS[name], "bench")}
    rows = []
    for label, plan in plans.items():
        row: dict[str, Any] = {"model": name, "plan": label, "vocab": plan.vocab_size, "ffn": plan.intermediate_size}
        for column, outtype, importance in (("f16", "f16", None), ("q4_k_m", "q4_k_m", None),
                                            ("q4_k_m+imatrix", "q4_k_m", scores.matmul)):
            if column == "f16" and args.no_f16:
                row[column] = row[f"{column} MB"] = float("nan")
                continue
            out = work / f"{name}-{label}-{column}"
            export(source, plan, out, "gguf", ExportOptions(outtype=outtype, progress=False, report_plots=False,
                                                            importance=importance), force=True)
            gguf = next(p for p in out.glob("*.gguf") if p.name != "imatrix.gguf")
            row[column] = gguf_bits_per_byte(out, texts, args.seq_len, args.threads)
            row[f"{column} MB"] = gguf.stat().st_size / 1e6
            print(f"{name} {label} {column}: {row[column]:.4f} bits/byte, {row[f'{column} MB']:.1f} MB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | plan | vocab | ffn | f16 | q4_k_m | q4_k_m + imatrix | gap to f16 closed | q4_k_m MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gap = r["q4_k_m"] - r["f16"]
        closed = (r["q4_k_m"] - r["q4_k_m+imatrix"]) / gap if gap > 0 else float("nan")
        lines.append(f"| {r['model']} | {r['plan']} | {r['vocab']} | {r['ffn']} | {r['f16']:.4f} | {r['q4_k_m']:.4f} "
                     f"| {r['q4_k_m+imatrix']:.4f} | {100 * closed:.0f}% | {r['q4_k_m MB']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "gemma"], choices=sorted(CUTS))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-imatrix"))
    p.add_argument("--calib-tokens", type=int, default=65536)
    p.add_argument("--eval-chars", type=int, default=60000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--no-f16", action="store_true", help="skip the f16 ceiling (saves two exports per model)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [row for name in args.models for row in measure(name, args.work, args)]
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
