"""Drive an exported ONNX decoder with onnxruntime, and the pruned HF model it must reproduce.

`OnnxDecoder` feeds the graph the way onnxruntime-genai does (attention_mask over past + new
tokens, explicit position_ids, past key/values concatenated by the graph). `teacher_forced`
runs a prefill and then single-token steps with the cache; `reference_logits` is the pruned HF
model's full forward over the same tokens, without a cache, which is what every step must match.
`genai_greedy` lets onnxruntime-genai itself drive the exported folder.
"""
from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan


class OnnxDecoder:
    """One onnxruntime session over model.onnx, with the cache handled like onnxruntime-genai does."""

    def __init__(self, folder: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.float = np.float16 if self.past[0].type == "tensor(float16)" else np.float32
        heads, head_dim = self.past[0].shape[1], self.past[0].shape[3]
        if not (isinstance(heads, int) and isinstance(head_dim, int)):  # onnxruntime-genai's builder names them
            decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
            heads, head_dim = decoder["num_key_value_heads"], decoder["head_size"]
        self.cache_dims: tuple[int, int] = (heads, head_dim)

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        heads, head_dim = self.cache_dims
        return {i.name: np.zeros((batch, heads, 0, head_dim), dtype=self.float) for i in self.past}

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                 "position_ids": positions.astype(np.int64), **past}
        feeds = {name: value for name, value in feeds.items() if name in self.inputs}  # fused: no position_ids
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, feeds), strict=True))
        present = {n.replace("present.", "past_key_values."): v for n, v in outputs.items() if n != "logits"}
        return outputs["logits"].astype(np.float32), present


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding, as transformers' generate computes them."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def teacher_forced(decoder: OnnxDecoder, ids: np.ndarray, mask: np.ndarray, prefill: int) -> np.ndarray:
    """Logits for every position: a prefill of `prefill` tokens, then one token per step with the cache."""
    positions = positions_from_mask(mask)
    logits, past = decoder.step(ids[:, :prefill], mask[:, :prefill], positions[:, :prefill],
                                decoder.empty_past(ids.shape[0]))
    out = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, past = decoder.step(ids[:, t:t + 1], mask[:, :t + 1], positions[:, t:t + 1], past)
        out.append(logits)
    return np.concatenate(out, axis=1)


def greedy(decoder: OnnxDecoder, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt with the cache."""
    ids = np.array([prompt])
    mask = np.ones_like(ids)
    logits, past = decoder.step(ids, mask, positions_from_mask(mask), decoder.empty_past(1))
    out: list[int] = []
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        mask = np.ones((1, len(prompt) + len(out)), dtype=np.int64)
        logits, past = decoder.step(np.array([[token]]), mask, np.array([[mask.shape[1] - 1]]), past)
    return out


def reference_logits(model: PreTrainedModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The HF model's logits over the whole sequence at once (no cache), with the same padding and positions."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions_from_mask(mask)))
    return out.logits.float().numpy()


def hf_greedy(model: PreTrainedModel, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' generate, greedy, exactly `new_tokens` tokens (end-of-sequence suppressed)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
    return out[0, len(prompt):].tolist()


def pruned_hf_model(src: Path, plan: PrunePlan, out: Path) -> PreTrainedModel:
    """The pruned model as written by the HF exporter (the reference), in float32 with eager attention."""
    export(open_source(src), plan, out, "hf", force=True)
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()


def max_rel_error(got: np.ndarray, want: np.ndarray, valid: np.ndarray) -> float:
    """max |got - want| over valid positions, in units of the logit scale max |want|."""
    return float(np.abs(got - want)[valid].max() / np.abs(want[valid]).max())


def leading_equal(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def genai_greedy(folder: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding by onnxruntime-genai from the exported folder (genai_config.json), EOS suppressed."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    total = len(prompt) + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def cached_decode_error(onnx_dir: Path, reference: PreTrainedModel, ids: np.ndarray, mask: np.ndarray,
                        prefill: int) -> float:
    """Max |onnx - transformers| / logit scale over a prefill of `prefill` tokens and the cached steps after it."""
    got = teacher_forced(OnnxDecoder(onnx_dir), ids, mask, prefill)
    return max_rel_error(got, reference_logits(reference, ids, mask), mask.astype(bool))
