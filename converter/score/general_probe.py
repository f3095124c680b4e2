"""The general probe: everyday prompts the dense model answers, so pruning can be judged on chat.

Calibration text from one domain (the built-in default is Python's documentation) drops the
tokens of everyday chat: SmolLM2 pruned 20% on it answered "What is the capital of France?"
with "The capital of Fremance is Fremance". The probe (`data/general_probe.jsonl`, 420 prompts
written for this project over 15 topics, about one in five held out) lets scoring ask the dense
model itself what it says to ordinary requests. Each prompt goes through the tokenizer's chat
template with the generation prompt when it has one (plain text plus a newline otherwise), and
the answers come from batched greedy decoding with a KV cache: prompts sorted by length and
left-padded, every row stopping at its first end-of-turn or EOS token. Greedy answers equal
`model.generate(do_sample=False)` token for token. It runs on a loaded transformers causal LM
or on scoring's ModelRunner in whole mode; a layer-by-layer runner holds one layer at a time
and cannot decode, and says so. Cost, measured on SmolLM2-135M-Instruct (CPU, one torch thread,
float32, 64 calib prompts, CPU seconds per prompt, prefill included): 32 new tokens 0.62 / 0.45 /
0.39 s at batch 8 / 16 / 32, 48 tokens 0.85 / 0.60 / 0.52 s, 64 tokens 1.05 / 0.71 / 0.53 s;
a plain score of the default sample cost 220 s the same way, so the 25% allowance buys about 100
prompts at 48 tokens in batches of 32 (DEFAULT_CALIB_PROMPTS). The file interleaves topics, so
any prefix of a split is spread over all of them.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from converter.errors import ConvertError
from converter.score.engine import ModelRunner

PROBE_FILE = "general_probe.jsonl"
SPLITS = ("calib", "heldout")
DEFAULT_MAX_NEW_TOKENS = 48
DEFAULT_BATCH_SIZE = 32
DEFAULT_CALIB_PROMPTS = 96
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")

# (ids [B, T], attention mask [B, past + T], position ids [B, T], cache) -> (last logits [B, V], cache)
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]
# (next-token logits [B, V], rows still answering [B]) at every decoding step
Observer = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class ProbePrompt:
    """One everyday prompt of the shipped probe."""

    id: int
    topic: str
    prompt: str
    split: str


@dataclass(frozen=True)
class ProbeAnswer:
    """A prompt as the model saw it and its greedy answer (the stop token is not part of it)."""

    prompt_id: int
    prompt_text: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    answer_text: str
    stopped: bool

    def to_json(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "prompt_text": self.prompt_text, "prompt_ids": list(self.prompt_ids),
                "answer_ids": list(self.answer_ids), "answer_text": self.answer_text, "stopped": self.stopped}


def load_probe(split: str | None = None) -> tuple[ProbePrompt, ...]:
    """The shipped probe's prompts in file order (topics interleaved), optionally of one split only."""
    if split is not None and split not in SPLITS:
        raise ConvertError(f"probe split {split!r} is not one of {', '.join(SPLITS)}", PROBE_FILE)
    text = resources.files("converter.score").joinpath("data", PROBE_FILE).read_text(encoding="utf-8")
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = ProbePrompt(id=int(row["id"]), topic=str(row["topic"]), prompt=str(row["prompt"]),
                                 split=str(row["split"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConvertError(f"line {number} is not a probe prompt ({exc})", PROBE_FILE) from exc
        if split is None or prompt.split == split:
            prompts.append(prompt)
    return tuple(prompts)


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model is asked it: its chat template with the generation prompt, or text + newline."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        return str(rendered)
    return prompt + "\n"


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Ids of a formatted prompt: a rendered template spells its own special tokens, plain text gets the tokenizer's."""
    special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def stop_ids(tokenizer: Any, eos: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """Ids that end an answer: the given EOS (generation config), the tokenizer's, and known end-of-turn tokens."""
    found: set[int] = set()
    if isinstance(eos, int):
        found.add(eos)
    elif eos is not None:
        found.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    found.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(sorted(found))


def cannot_generate(model: object) -> str | None:
    """Why this model cannot decode answers, or None when it can."""
    if isinstance(model, ModelRunner) and model.layerwise:
        return ("the model is scored layer by layer (it does not fit the device whole), and greedy decoding "
                "needs every layer at once; pass calibration text with --calib instead of the general probe")
    return None


def _cache_name(module: Any) -> str:
    """transformers 5 names the KV cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _causal_lm_step(model: Any) -> Step:
    name = _cache_name(model)

    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{name: cache})
        return out.logits[:, -1].float(), _cache_of(out)
    return step


def _runner_step(runner: ModelRunner) -> Step:
    rows = runner.output_rows(None)
    name = _cache_name(runner.base)

    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = runner.base(input_ids=ids.to(runner.device), attention_mask=mask.to(runner.device),
                          position_ids=positions.to(runner.device), use_cache=True, **{name: cache})
        return runner.logits(out.last_hidden_state[:, -1], rows), _cache_of(out)
    return step


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def greedy_batch(step: Step, prompts: Sequence[Sequence[int]], stops: Sequence[int], max_new_tokens: int,
                 pad: int, observe: Observer | None = None) -> list[tuple[list[int], bool]]:
    """Greedy answers of one left-padded batch: (answer ids without the stop token, whether it stopped).

    `observe` sees every step's logits and which rows were still answering when they were computed.
    """
    ids, mask = _left_pad(prompts, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stop = torch.as_tensor(list(stops), dtype=torch.long)
    answers: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    stopped = torch.zeros(len(prompts), dtype=torch.bool)
    cache = None
    for _ in range(max_new_tokens):
        logits, cache = step(ids, mask, positions, cache)
        nxt = logits.argmax(-1).cpu()
        if observe is not None:
            observe(logits, ~done)
        hit = torch.isin(nxt, stop) & ~done
        for row in torch.nonzero(~done & ~hit).flatten().tolist():
            answers[row].append(int(nxt[row]))
        stopped |= hit
        done |= hit
        if bool(done.all()):
            break
        ids = torch.where(done, torch.full_like(nxt, pad), nxt)[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
    return [(a, bool(s)) for a, s in zip(answers, stopped.tolist())]


@torch.inference_mode()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[ProbePrompt],
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
                     eos: int | Sequence[int] | None = None, observe: Observer | None = None) -> list[ProbeAnswer]:
    """Greedy answers of a loaded model (transformers causal LM, or a whole-mode ModelRunner), in prompt order.

    `eos` adds the generation config's EOS ids to the stop tokens; when None the model config's is used.
    """
    reason = cannot_generate(model)
    if reason is not None:
        raise ConvertError(f"cannot answer the general probe: {reason}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ConvertError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be at least 1")
    step = _runner_step(model) if isinstance(model, ModelRunner) else _causal_lm_step(model)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    stops = stop_ids(tokenizer, eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    texts = [format_prompt(tokenizer, p.prompt) for p in prompts]
    encoded = [encode_prompt(tokenizer, t) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: dict[int, tuple[list[int], bool]] = {}
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        for index, result in zip(group, greedy_batch(step, [encoded[i] for i in group], stops, max_new_tokens,
                                                     int(pad), observe)):
            results[index] = result
    return [ProbeAnswer(prompt_id=p.id, prompt_text=texts[i], prompt_ids=tuple(encoded[i]),
                       answer_ids=tuple(results[i][0]), answer_text=tokenizer.decode(results[i][0],
                                                                                     skip_special_tokens=True),
                       stopped=results[i][1])
            for i, p in enumerate(prompts)]
