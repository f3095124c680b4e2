"""`compact-convert verify`: load an export in its own runtime and check it against the pruned source.

detect says what OUT is (hf, gguf, onnx) and its weight type; reference rebuilds the pruned
Hugging Face model from IN and OUT's prune_plan.json; runtime_hf, runtime_gguf and runtime_onnx
load each side (transformers, llama.cpp, onnxruntime); checks compares tokenization, logits and
bits per byte; retention_check measures general-capability retention on the general probe's
everyday prompts (dense IN against the pruned reference); tolerance holds the bound per weight
type; table prints the result.
"""
from __future__ import annotations

from converter.verify.verifier import Verdict, verify

__all__ = ["Verdict", "verify"]
