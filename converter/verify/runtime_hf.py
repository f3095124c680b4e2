"""transformers and tokenizers as verify's runtimes: the reference side, and the subject for hf outputs.

Models load with stock AutoModelForCausalLM (no remote code: compact-convert never runs code from
a model folder) in float32 with eager attention, the same numerics the export tests compare in.
`JsonTokenizer` is tokenizer.json read by the `tokenizers` library alone, which is what
onnxruntime-genai and the README's ONNX snippet use; `HfTokenizer` is transformers' loading of
the whole tokenizer folder, the pruned reference every runtime's tokenization must reproduce.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ConvertError


class HfTokenizer:
    """AutoTokenizer over a folder (no remote code); encodes without added special tokens."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ConvertError(f"has no tokenizer transformers can load ({' '.join(str(exc).split())[:200]})",
                               folder) from None
        self.name = "transformers"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids)) if ids else ""

    def pieces(self, ids: list[int]) -> list[str]:
        return [str(p) for p in self.tokenizer.convert_ids_to_tokens(ids)]

    def __len__(self) -> int:
        return len(self.tokenizer)


class JsonTokenizer:
    """tokenizer.json through the `tokenizers` library, as onnxruntime-genai reads it."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ConvertError(f"cannot be loaded by the tokenizers library ({exc})", path) from None
        self.name = "tokenizers (tokenizer.json)"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


class HfModel:
    """A transformers causal LM in float32; logits for one unpadded sequence."""

    def __init__(self, folder: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        logging.disable_progress_bar()
        torch.set_num_threads(max(1, threads))
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation="eager",
                                                              trust_remote_code=False).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ConvertError(f"does not load in transformers ({' '.join(str(exc).split())[:200]})", folder) from None
        self.name = "transformers"
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([list(ids)], dtype=torch.long))
        return out.logits[0].float().numpy()
