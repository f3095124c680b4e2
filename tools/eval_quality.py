"""Held-out bits per byte of COMPACT against its baselines on a real model (default SmolLM2-135M).

Evaluation text is English legal prose: the software licence texts on this machine (the
`*LICENSE*`/`*COPYING*` files of the installed Python packages and /usr/share/common-licenses),
split into whitespace-normalised paragraphs, deduplicated, and assigned by a hash of the
paragraph to evaluation (about a quarter, capped at --eval-chars) or to in-domain calibration
(the rest): the same kind of text, disjoint from it. The other calibration is the built-in
default, Python's reference documentation. For each calibration and each budget (--ratios) it
scores the model once, lets COMPACT pick the split (auto-split on held-out calibration text),
then prunes with every criterion at that same split, plus vocabulary-only and FFN-only cuts of
the same size, exports each with the real pipeline to a Hugging Face folder and measures that
folder with transformers and its own rewritten tokenizer. Bits per byte = total NLL in bits
over UTF-8 bytes. Nothing is tuned on the evaluation text.

Defaults are the product's (65536 activation tokens in windows of 512, 8192 held-out tokens for
auto-split, 6 candidate splits). Besides the budget-matched rows it measures the two components of
the chosen split alone (its vocabulary with the full FFN, its FFN with the full vocabulary; these
remove less than the budget), and for each row the share of the evaluation text's bytes that the
full tokenizer covers with tokens the plan drops (a lower bound on the bytes tokenized differently).
With --refit it also scores the down_proj Gram matrices and measures the least-squares refit:
auto-split with refitted candidates, compact's own split refitted, and FFN-only refitted.
Scores can be cached (--scores-dir) so planning experiments do not score again. It ends with a
markdown table.

    python -m tools.eval_quality [--model smollm2|gemma|DIR] [--ratios 0.2 0.35] [--scores-dir D] [--json OUT]
    python -m tools.eval_quality --model gemma --ratios 0.5 --calib-tokens 16384
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan
from converter.score.autosplit import Budget, make_plan
from converter.score.bpb import eval_windows, start_id, text_bytes
from converter.score.budget import budget_for, param_model
from converter.score.scorer import ScoreOptions, pad_batches, score
from converter.score.corpus import open_corpus
from converter.score.planner import VocabFitter, build_plan
from converter.score.refit_solver import fit_refit
from converter.score.scores import Scores
from converter.score.tokens import load_tokenizer
from exporters.options import ExportOptions

LICENSE_NAMES = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.IGNORECASE)


def licence_files() -> list[Path]:
    roots = [Path(sysconfig.get_paths()["purelib"]), Path("/usr/share/common-licenses")]
    files = set()
    for root in roots:
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file() and (root.name == "common-licenses" or LICENSE_NAMES.match(path.name)):
                    files.add(path.resolve())
    return sorted(files)


def licence_paragraphs() -> list[str]:
    seen: set[str] = set()
    out = []
    for path in licence_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for para in re.split(r"\n\s*\n", text):
            norm = " ".join(para.split())
            if len(norm) >= 40 and norm not in seen and sum(c.isalpha() for c in norm) > 0.6 * len(norm):
                seen.add(norm)
                out.append(norm)
    return out


def split_domain(eval_chars: int) -> tuple[list[str], list[str]]:
    """(evaluation documents of ~2000 chars, calibration paragraphs): disjoint by paragraph hash."""
    evaluation, calib = [], []
    for para in licence_paragraphs():
        bucket = hashlib.blake2b(para.encode(), digest_size=4).digest()[0] % 4
        (evaluation if bucket == 0 else calib).append(para)
    docs, current, used = [], "", 0
    for para in evaluation:
        if used >= eval_chars:
            break
        current = f"{current}\n\n{para}" if current else para
        used += len(para)
        if len(current) >= 2000:
            docs.append(current)
            current = ""
    if current:
        docs.append(current)
    return docs, calib


def licence_calibration_file(work: Path, calib: list[str]) -> Path:
    """The in-domain calibration paragraphs as one text file in `work`, the form --calib reads."""
    path = work / "licences-calib.txt"
    path.write_text("\n\n".join(calib) + "\n", encoding="utf-8")
    return path


@torch.inference_mode()
def hf_bits_per_byte(folder: Path, texts: list[str], seq_len: int, batch_tokens: int = 2048) -> float:
    """Bits per byte of a saved HF model with its own tokenizer, through stock transformers."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    windows = eval_windows(tok, texts, start_id(tok, config), seq_len)
    total = 0.0
    for ids, mask in pad_batches(windows, seq_len, batch_tokens):
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(2, ids[:, 1:, None])[..., 0]
        total += float(nll[mask[:, 1:]].double().sum())
    return total / math.log(2) / text_bytes(texts)


def exported_bpb(source: Any, plan: PrunePlan, texts: list[str], seq_len: int, work: Path) -> tuple[float, int]:
    out = work / "export"
    export(source, plan, out, "hf", ExportOptions(progress=False), force=True)
    try:
        params = sum(math.prod(t.shape) for f in out.glob("*.safetensors") for t in _tensors(f))
        return hf_bits_per_byte(out, texts, seq_len), params
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _tensors(path: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return list(load_file(str(path)).values())


class EvalTokens:
    """The full tokenizer's tokens of the evaluation text with their UTF-8 byte lengths."""

    def __init__(self, folder: Path, texts: list[str]) -> None:
        tok = load_tokenizer(folder)
        ids: list[int] = []
        sizes: list[int] = []
        for text, row, offsets in zip(texts, *_encode_offsets(tok, texts)):
            for token, (a, b) in zip(row, offsets):
                ids.append(token)
                sizes.append(len(text[a:b].encode("utf-8")))
        self.ids = np.asarray(ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)

    def dropped_byte_share(self, kept_ids: tuple[int, ...], vocab: int) -> float:
        """Share of the text's bytes inside tokens the plan drops: they must be spelled with others."""
        keep = np.zeros(vocab, dtype=bool)
        keep[np.asarray(kept_ids, dtype=np.int64)] = True
        return float(self.sizes[~keep[self.ids]].sum() / max(1, self.sizes.sum()))


def _encode_offsets(tok: Any, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return enc["input_ids"], enc["offset_mapping"]


def cached_scores(source: Any, corpus: Any, options: ScoreOptions, label: str, cache: Path | None,
                  calib_file: Path) -> Any:
    """Score once per (model, calibration text, options); reuse the file when --scores-dir holds it."""
    path = None
    if cache is not None:
        key = hashlib.blake2b(digest_size=8)
        key.update(source.checkpoint.fingerprint().encode())
        key.update(repr((label, options.calib_tokens, options.seq_len, options.heldout_tokens)
                        + (("gram",) if options.gram else ())).encode())
        if label == "in-domain":
            key.update(calib_file.read_bytes())
        path = cache / f"scores-{label}-{key.hexdigest()}.safetensors"
        if path.is_file():
            print(f"{label}: scores from {path}", flush=True)
            return Scores.load(path)
    t = time.time()
    scores = score(source, corpus, options)
    print(f"{label}: scored in {time.time() - t:.0f}s", flush=True)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        scores.save(path)
    return scores


def run_budget(source: Any, scores: Any, ratio: float, texts: list[str], args: argparse.Namespace, work: Path,
               dense: float, log: list[dict[str, Any]], label: str, eval_tokens: EvalTokens) -> None:
    model = param_model(source)
    budget = Budget(target_ratio=ratio, device="cpu", splits=args.splits, eval_seq_len=args.seq_len)
    t = time.time()
    chosen = make_plan(source, scores, budget, label)
    print(f"auto-split in {time.time() - t:.0f}s: {chosen.metadata.get('auto_split')}", flush=True)
    fitter = VocabFitter(source, scores)
    vocab = fitter.fit(chosen.vocab_size)
    limit = budget_for(model, ratio)
    rows: list[tuple[str, PrunePlan]] = [("compact (auto-split)", chosen)]
    for focus in args.focus:
        rows.append((f"compact focus={focus}", build_plan(source, scores, vocab, chosen.intermediate_size,
                                                          "compact", model, focus)))
    all_counted = float(chosen.metadata.get("calibration_coverage", 1)) >= 1.0
    for method in args.methods if label in args.baselines else ["act2"]:
        if method == "act2" and all_counted and not args.always_act2:
            print(f"{label:10} {ratio:4.2f} act2 equals compact here: every calibration token survives the cut",
                  flush=True)
            continue
        rows.append((method, build_plan(source, scores, vocab, chosen.intermediate_size, method, model)))
    ffn_only = model.ffn_for(model.vocab, limit, 32)
    if ffn_only >= 32:
        rows.append(("ffn-only (compact=act2)", build_plan(source, scores, fitter.fit(model.vocab), ffn_only,
                                                           "compact", model)))
    vocab_target = model.vocab - math.ceil((model.total - limit) / model.per_token)
    if vocab_target >= fitter.minimum():
        rows.append(("vocab-only", build_plan(source, scores, fitter.fit(vocab_target), model.ffn, "compact", model)))
    if args.components and chosen.vocab_size < model.vocab and chosen.intermediate_size < model.ffn:
        rows.append(("  its vocab cut alone", build_plan(source, scores, vocab, model.ffn, "compact", model)))
        rows.append(("  its ffn cut alone", build_plan(source, scores, fitter.fit(model.vocab),
                                                       chosen.intermediate_size, "compact", model)))
    if args.refit:
        t = time.time()
        refitted = make_plan(source, scores, replace(budget, refit=True), label)
        print(f"auto-split with refit in {time.time() - t:.0f}s: {refitted.metadata.get('auto_split')}", flush=True)
        rows.append(("compact+refit (auto-split)", refitted))
        rows.append(("  compact's split, refitted", fit_refit(source, scores, chosen)))
        if ffn_only >= 32:
            rows.append(("ffn-only+refit", fit_refit(source, scores, build_plan(
                source, scores, fitter.fit(model.vocab), ffn_only, "compact", model))))
        if refitted.vocab_size < model.vocab and refitted.intermediate_size < model.ffn:
            rows.append(("  its ffn cut alone, refitted", fit_refit(source, scores, build_plan(
                source, scores, fitter.fit(model.vocab), refitted.intermediate_size, "compact", model))))
    measured: dict[tuple[Any, ...], tuple[float, int]] = {}
    for name, plan in rows:
        t = time.time()
        key = (plan.kept_token_ids, plan.kept_ffn_channels, plan.refit is not None)
        if key not in measured:
            measured[key] = exported_bpb(source, plan, texts, args.seq_len, work)
        bpb, params = measured[key]
        predicted = plan.metadata["params_after_predicted"]
        entry = {"calibration": label, "ratio": ratio, "config": name, "vocab": plan.vocab_size,
                 "ffn": plan.intermediate_size, "params": params, "predicted_params": predicted,
                 "removed": 1 - params / model.total, "bpb": bpb, "delta": bpb / dense - 1,
                 "coverage": plan.metadata.get("calibration_coverage"),
                 "eval_dropped_bytes": eval_tokens.dropped_byte_share(plan.kept_token_ids, model.vocab),
                 "seconds": round(time.time() - t, 1)}
        if "auto-split" in name:
            entry["auto_split"] = plan.metadata.get("auto_split")
        log.append(entry)
        print(f"{label:10} {ratio:4.2f} {name:26} vocab {plan.vocab_size:6} ffn {plan.intermediate_size:5} "
              f"removed {100 * entry['removed']:5.1f}%  bpb {bpb:.4f}  {100 * entry['delta']:+6.1f}%  "
              f"calib coverage {100 * float(entry['coverage'] or 1):5.1f}%  "
              f"eval bytes in dropped tokens {100 * entry['eval_dropped_bytes']:5.2f}%"
              + ("" if params == predicted else f"  PARAMS {params} != predicted {predicted}"), flush=True)


def markdown(log: list[dict[str, Any]], model_name: str) -> str:
    """The acceptance table: one row per measured configuration, deltas against dense."""
    dense = next(e["bpb"] for e in log if e["config"] == "dense")
    lines = [f"Held-out bits per byte, {model_name}; dense {dense:.4f}.", "",
             "| calibration | target | config | vocab | ffn | removed | bpb | vs dense | calib coverage "
             "| eval bytes in dropped tokens |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in log:
        if e["config"] == "dense":
            continue
        lines.append(f"| {e['calibration']} | -{100 * e['ratio']:.0f}% | {e['config'].strip()} | {e['vocab']} "
                     f"| {e['ffn']} | {100 * e['removed']:.1f}% | {e['bpb']:.4f} | {100 * e['delta']:+.1f}% "
                     f"| {100 * float(e['coverage'] or 1):.1f}% | {100 * e['eval_dropped_bytes']:.2f}% |")
    return "\n".join(lines)


def model_folder(name: str) -> Path:
    if name in ("smollm2", "gemma"):
        root = Path("tests/.fixtures")
        if name == "gemma":
            from tools.gemma3_hf import cached_gemma3_hf

            return cached_gemma3_hf(root)
        from tools.smollm2_hf import cached_smollm2_hf

        return cached_smollm2_hf(root)
    return Path(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2",
                   help="smollm2 or gemma (the cached example builds, SmolLM2-135M and Gemma-3-270M), or an HF folder")
    p.add_argument("--calib-tokens", type=int, default=ScoreOptions.calib_tokens)
    p.add_argument("--seq-len", type=int, default=ScoreOptions.seq_len)
    p.add_argument("--heldout-tokens", type=int, default=ScoreOptions.heldout_tokens)
    p.add_argument("--eval-chars", type=int, default=24000)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.35])
    p.add_argument("--splits", type=int, default=Budget.splits)
    p.add_argument("--components", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the chosen split's vocabulary cut and FFN cut alone")
    p.add_argument("--scores-dir", type=Path, help="cache scores files here and reuse them")
    p.add_argument("--markdown", type=Path, help="also write the markdown table here")
    p.add_argument("--focus", type=float, nargs="*", default=[0.5])
    p.add_argument("--calibrations", nargs="+", default=["in-domain", "default"], choices=["in-domain", "default"])
    p.add_argument("--baselines", nargs="*", default=["in-domain"],
                   help="calibrations for which every baseline runs (the others get act2 only)")
    p.add_argument("--methods", nargs="*", default=["act2", "magnitude", "random"])
    p.add_argument("--always-act2", action="store_true",
                   help="measure act2 even where it must equal compact (every calibration token kept)")
    p.add_argument("--refit", action="store_true",
                   help="also measure the least-squares down_proj refit: auto-split with refit, compact's split "
                        "refitted, FFN-only refitted")
    p.add_argument("--json", type=Path, help="write every row here as JSON")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    folder = model_folder(args.model)
    source = open_source(folder)
    texts, calib = split_domain(args.eval_chars)
    work = Path(tempfile.mkdtemp(prefix="eval-quality-"))
    log: list[dict[str, Any]] = []
    try:
        calib_file = licence_calibration_file(work, calib)
        print(f"model {folder}; eval: {len(texts)} licence documents, {text_bytes(texts):,} bytes; in-domain "
              f"calibration: {len(calib)} disjoint licence paragraphs, {calib_file.stat().st_size:,} bytes",
              flush=True)
        eval_tokens = EvalTokens(folder, texts)
        dense = hf_bits_per_byte(folder, texts, args.seq_len)
        log.append({"config": "dense", "bpb": dense})
        print(f"dense bpb {dense:.4f}", flush=True)
        for label in args.calibrations:
            corpus = open_corpus([calib_file] if label == "in-domain" else None)
            options = ScoreOptions(calib_tokens=args.calib_tokens, seq_len=args.seq_len,
                                   heldout_tokens=args.heldout_tokens, device="cpu", gram=args.refit)
            scores = cached_scores(source, corpus, options, label, args.scores_dir, calib_file)
            print(f"{label}: {scores.describe()}; {int((scores.counts > 0).sum())} distinct tokens counted",
                  flush=True)
            for ratio in args.ratios:
                run_budget(source, scores, ratio, texts, args, work, dense, log, label, eval_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(log, indent=1))
    table = markdown(log, folder.name)
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
