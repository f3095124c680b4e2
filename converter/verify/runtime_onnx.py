"""onnxruntime as verify's runtime for ONNX outputs, fed the way onnxruntime-genai feeds the graph.

The graph (exporters/onnx) takes input_ids, attention_mask over past + new tokens,
past_key_values.{i}.key/value and, for the traced graph only, explicit position_ids (the fused
graph's GroupQueryAttention derives positions from the mask); it returns logits and
present.{i}.key/value, the past and the new tokens' keys/values together.
`logits` runs a prefill and then single cached steps for the last few tokens, so the KV cache
path is checked too, not just one full-sequence pass; a graph that returns the last position's
logits only (--onnx-logits last) is stepped a token at a time instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from converter.errors import ConvertError

CACHED_STEPS = 4


class OnnxModel:
    """One CPU onnxruntime session over model.onnx."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise ConvertError("verifying an ONNX output needs onnxruntime; pip install 'compact-convert[onnx]'",
                               path) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConvertError(f"does not load in onnxruntime ({' '.join(str(exc).split())[:200]})", path) from None
        names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ConvertError("is not a compact-convert decoder graph: it lacks input_ids or attention_mask", path)
        self.positions = "position_ids" in names
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.float = np.float16 if self.past and self.past[0].type == "tensor(float16)" else np.float32
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = "onnxruntime"
        shape = self.session.get_outputs()[0].shape
        self.vocab_size = int(shape[-1]) if isinstance(shape[-1], int) else -1
        self.last_only = len(shape) == 3 and shape[1] == 1

    def _step(self, ids: Sequence[int], total: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        start = total - len(ids)
        feeds = {"input_ids": np.array([list(ids)], dtype=np.int64),
                 "attention_mask": np.ones((1, total), dtype=np.int64), **past}
        if self.positions:
            feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None]
        results = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        present = {n.replace("present.", "past_key_values."): v for n, v in results.items() if n != "logits"}
        return results["logits"][0].astype(np.float32), present

    def logits(self, ids: Sequence[int], cached_steps: int = CACHED_STEPS) -> np.ndarray:
        """Logits for every position: a prefill, then `cached_steps` single tokens with the cache."""
        ids = list(ids)
        steps = len(ids) - 1 if self.last_only else min(cached_steps, len(ids) - 1)
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=self.float) for i in self.past}
        prefill = len(ids) - steps
        out, past = self._step(ids[:prefill], prefill, past)
        rows = [out]
        for t in range(prefill, len(ids)):
            out, past = self._step(ids[t:t + 1], t + 1, past)
            rows.append(out)
        return np.concatenate(rows, axis=0)
