"""Bits per byte of a text under a model, or under a candidate pruned model without writing it.

Vocabulary pruning changes tokenization, so perplexities of different vocabularies are not
comparable; bits per byte (total negative log-likelihood of the text in bits over its UTF-8
byte count) is. Each text is tokenized by the model's own tokenizer, starts with the model's
start token (the tokenizer's own, or the config's BOS/EOS when the tokenizer adds none, so
every text token is predicted), and long texts are cut into windows that each restart with it.

A candidate plan is simulated exactly: inputs are the pruned tokenizer's ids mapped back to the
original ids, dropped FFN channels are zeroed at the input of down_proj (which is what removing
them does; each expert's dropped channels likewise, at its down projection), and the softmax runs over
the kept output rows only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from converter.score.scorer import pad_batches
from converter.score.engine import ModelRunner
from converter.score.expert_mask import masked_experts

LOGIT_BYTES = 1 << 28


def start_id(tokenizer: Any, config: dict[str, Any]) -> int | None:
    """The id every evaluated window starts with, if the tokenizer does not add one itself."""
    probe = "Hello"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    without = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if len(with_special) > len(without) and with_special[0] != without[0]:
        return None
    for key in ("bos_token_id", "eos_token_id"):
        value = config.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return None


def eval_windows(tokenizer: Any, texts: Sequence[str], first: int | None, seq_len: int) -> list[np.ndarray]:
    """Token windows of at most seq_len, each beginning with the start token, covering every text token."""
    windows: list[np.ndarray] = []
    for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]:
        ids = np.asarray(ids, dtype=np.int64)
        head = ids[:1] if first is None else np.asarray([first], dtype=np.int64)
        body = ids[1:] if first is None else ids
        for start in range(0, body.size, seq_len - 1):
            windows.append(np.concatenate([head, body[start:start + seq_len - 1]]))
    return windows


class MaskProbe:
    """Zeroes dropped FFN channels at the input of down_proj."""

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks

    def begin_batch(self, index: int) -> None:
        pass

    def down_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x * self.masks[layer].to(x.dtype)


class RefitProbe:
    """Replaces the input of down_proj by the refit's full-width map of the kept channels.

    Through the dense down_proj that equals the refitted down_proj on the kept channels alone
    (see converter.score.refit_solver), so a refitted candidate is simulated without building it.
    """

    def __init__(self, kept: Sequence[torch.Tensor], maps: Sequence[torch.Tensor]) -> None:
        self.kept = kept
        self.maps = maps

    def begin_batch(self, index: int) -> None:
        pass

    def down_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.kept[layer]] @ self.maps[layer].to(x.dtype)


def total_nll_bits(runner: ModelRunner, windows: list[np.ndarray], rows: Sequence[int] | None = None,
                   kept_channels: Sequence[Sequence[int]] | None = None, batch_tokens: int = 4096,
                   seq_len: int = 1024, ffn_maps: Sequence[np.ndarray] | None = None,
                   kept_experts: Sequence[Sequence[Sequence[int]]] | None = None) -> float:
    """Summed NLL in bits of every window's tokens after the first; windows hold ids of the output rows.

    With `rows`, window ids index the kept rows (new ids) and inputs are rows[id] in the original
    model; `kept_channels` keeps only those FFN channels per layer, refitted when `ffn_maps` gives
    each layer's refit map (converter.score.refit_solver.refit_map); `kept_experts` only those channels
    of each expert of each layer (converter.score.expert_mask).
    """
    row_ids = torch.as_tensor(np.asarray(rows, dtype=np.int64)) if rows is not None else None
    out = runner.output_rows(None if rows is None else list(rows))
    probe: MaskProbe | RefitProbe | None = None
    if kept_channels is not None and ffn_maps is not None:
        probe = RefitProbe([torch.as_tensor(list(k), dtype=torch.long, device=runner.device) for k in kept_channels],
                           [torch.as_tensor(m, dtype=torch.float32, device=runner.device) for m in ffn_maps])
    elif kept_channels is not None:
        masks = torch.zeros(len(kept_channels), runner.source.spec.dims.ffn, device=runner.device)
        for layer, keep in enumerate(kept_channels):
            masks[layer, torch.as_tensor(list(keep), dtype=torch.long)] = 1.0
        probe = MaskProbe(masks)
    batches = pad_batches(windows, seq_len, batch_tokens)
    inputs = [ids if row_ids is None else row_ids[ids] for ids, _ in batches]
    total = torch.zeros((), dtype=torch.float64)
    chunk = max(16, LOGIT_BYTES // (4 * out.shape[0]))

    def on_output(index: int, hidden: torch.Tensor) -> None:
        nonlocal total
        ids, mask = batches[index]
        h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        target = ids[:, 1:].reshape(-1).to(hidden.device)
        valid = mask[:, 1:].reshape(-1).to(hidden.device)
        h, target = h[valid], target[valid]
        for start in range(0, h.shape[0], chunk):
            logits = runner.logits(h[start:start + chunk], out)
            logp = torch.log_softmax(logits, dim=-1)
            total = total + (-logp.gather(1, target[start:start + chunk, None])).double().sum().cpu()

    with masked_experts(runner, kept_experts):
        runner.run(inputs, probe, on_output)
    return float(total) / math.log(2)


def text_bytes(texts: Sequence[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)
