"""Retention of a pruned export on everyday chat: the general probe's held-out prompts.

The dense model answers the probe's prompts (greedy, through its chat template, batched with a
KV cache); the numbers are the share of those answers' bytes that fall in tokens the pruned
folder's prune_plan.json drops, and both models' teacher-forced bits per byte on the answers
(prompt as context, answer tokens scored, each model reading the texts through its own
tokenizer; the pruned folder is loaded with transformers). It also prints both models' greedy
answer to the probe's first prompt ("What is the capital of France? ..."), which is where the
README example's "The capital of Fremance is Fremance" shows. Issue 24's acceptance compares
against these numbers.

    python -m tools.eval_general --dense /tmp/bx/smollm2 --pruned /tmp/bx/before/smollm2-hf [--split heldout]

Measured on the README example (SmolLM2-135M-Instruct, -20% parameters, built-in calibration,
the pipeline before issue 24), 90 held-out prompts, 48 new tokens: 24.70% of the answers' bytes in
dropped tokens, answer bits per byte 0.2135 dense against 0.9621 pruned (4.51x), and the France
answer "The capital of France is Paris, a city steeped in history and culture." turned into "The
capital of Fremance is Fremance."
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from converter.plan import PrunePlan
from converter.score.general_probe import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, SPLITS, ProbeAnswer,
                                           generate_answers, load_probe)
from converter.score.retention import (Retention, answer_bits_per_byte, dropped_byte_share, retokenize,
                                       token_byte_table)

SHOWN_PROMPT_ID = 0
SHOWN_TOKENS = 64


def load(folder: Path) -> tuple[Any, Any]:
    """A model folder's transformers causal LM (float32, eval mode) and tokenizer, local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return model.eval(), tokenizer


def shown_answer(model: Any, tokenizer: Any) -> ProbeAnswer:
    prompt = next(p for p in load_probe() if p.id == SHOWN_PROMPT_ID)
    return generate_answers(model, tokenizer, [prompt], max_new_tokens=SHOWN_TOKENS, batch_size=1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense", type=Path, required=True, help="the dense Hugging Face model folder")
    parser.add_argument("--pruned", type=Path, required=True, help="a Hugging Face export with prune_plan.json")
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts of the split")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers and answers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    prompts = load_probe(args.split)[:args.limit]
    dense, dense_tok = load(args.dense)
    start = time.process_time()
    answers = generate_answers(dense, dense_tok, prompts, args.max_new_tokens, args.batch_size)
    gen_cpu = time.process_time() - start
    kept = PrunePlan.load(args.pruned / "prune_plan.json").kept_token_ids
    dropped = dropped_byte_share(answers, kept, token_byte_table(dense_tok))
    dense_bpb = answer_bits_per_byte(dense, retokenize(answers, dense_tok))
    dense_shown = shown_answer(dense, dense_tok)
    del dense

    pruned, pruned_tok = load(args.pruned)
    pruned_bpb = answer_bits_per_byte(pruned, retokenize(answers, pruned_tok))
    pruned_shown = shown_answer(pruned, pruned_tok)
    retention = Retention.of(dropped, pruned_bpb, dense_bpb, answers)

    print(f"{len(prompts)} {args.split} prompts, {retention.answer_bytes} answer bytes "
          f"({sum(a.stopped for a in answers)} ended by a stop token), generated in {gen_cpu:.1f} CPU s")
    print(f"dropped byte share   {retention.dropped_share:.2%}")
    print(f"answer bits/byte     dense {dense_bpb:.4f}   pruned {pruned_bpb:.4f}   ratio {retention.ratio:.2f}x")
    print(f"dense : {dense_shown.answer_text!r}")
    print(f"pruned: {pruned_shown.answer_text!r}")
    if args.json is not None:
        report = {"dense": str(args.dense), "pruned": str(args.pruned), "split": args.split,
                  "max_new_tokens": args.max_new_tokens, "retention": retention.to_json(),
                  "shown": {"prompt_id": SHOWN_PROMPT_ID, "dense": dense_shown.answer_text,
                            "pruned": pruned_shown.answer_text},
                  "answers": [a.to_json() for a in answers]}
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
