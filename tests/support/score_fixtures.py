"""Tiny models and calibration corpora shared by the scoring tests.

Corpora are slices of Python's pydoc topics written as .txt files, small enough that every
window of every document fits the activation sample, which makes sums exactly comparable
between a whole run, shards and ranks.
"""
from __future__ import annotations

import json
import math
import pydoc_data.topics
from pathlib import Path

import torch
from safetensors import safe_open

from converter.score.scorer import ScoreOptions
from tests.support.tiny_models import build_tiny_model, save_tiny_model

ALL_WINDOWS = ScoreOptions(calib_tokens=1 << 20, seq_len=64, batch_tokens=2048, heldout_tokens=1 << 20,
                           device="cpu")


def write_corpus(path: Path, first: int, count: int) -> Path:
    keys = sorted(pydoc_data.topics.topics)[first:first + count]
    path.write_text("\n\n".join(pydoc_data.topics.topics[k] for k in keys), encoding="utf-8")
    return path


def tiny_model_dir(root: Path, tokenizer_dir: Path, family: str = "llama", seed: int = 0, **overrides: object) -> Path:
    model = build_tiny_model(family, seed=seed, vocab_size=2000, **overrides)
    return save_tiny_model(model, root, tokenizer_dir=tokenizer_dir)


def folder_params(folder: Path) -> int:
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            names = st.keys()
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in names)
    return total


@torch.inference_mode()
def hf_bits(folder: Path, texts: list[str], seq_len: int) -> float:
    """Bits of `texts` under a saved HF model and its own tokenizer, through stock transformers."""
    from transformers import AutoModelForCausalLM

    from converter.score.bpb import eval_windows, start_id
    from converter.score.scorer import pad_batches
    from converter.score.tokens import load_tokenizer

    tok = load_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    total = 0.0
    for ids, mask in pad_batches(eval_windows(tok, texts, start_id(tok, config), seq_len), seq_len, 4096):
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(2, ids[:, 1:, None])[..., 0]
        total += float(nll[mask[:, 1:]].double().sum())
    return total / math.log(2)
