"""OLMo-2's GGUF conventions, checked where the family tests cannot see them.

The family tests (test_spine, test_gguf_tiny, test_onnx_families) run the tiny OLMo-2 (GQA: 4
heads, 2 kv heads, so the k norm spans 32 values and the q norm 64) against transformers. Here:
that its GGUF keys are the ones llama.cpp's own converter writes for an olmo2 checkpoint (no
`vocab_size`, no `rope.dimension_count`: an identity-plan GGUF compared by hand with
convert_hf_to_gguf.py's had every tensor bit-identical and these keys as the only difference);
that a tied OLMo-2, whose head llama.cpp's olmo2 graph still loads as `output` (it has no fallback
to the embedding, and its own converter writes a file it cannot load), gets the embedding as its
`output` and reproduces transformers' logits; and that a config `head_dim` other than
hidden / heads, which transformers honours but llama.cpp's olmo2 graph cannot load (it sizes q and
the attention output hidden x hidden), is refused in one line naming config.json, before anything
is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from converter.pipeline import export
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.source import open_source
from exporters.gguf.hparams import hyperparameters
from exporters.options import ExportOptions
from tests.support.gguf_runtime import llama_logits, load_llama, the_gguf
from tests.support.reference_prune import random_plan
from tests.support.refusal import Case, assert_refused
from tests.support.tiny_models import build_tiny_model, save_tiny_model

# The olmo2.* keys convert_hf_to_gguf.py writes for a checkpoint without sliding window or rope scaling.
CONVERTER_KEYS = {"context_length", "embedding_length", "feed_forward_length", "block_count", "attention.head_count",
                  "attention.head_count_kv", "attention.key_length", "attention.value_length",
                  "attention.layer_norm_rms_epsilon", "rope.freq_base"}


def test_gguf_keys_are_llama_cpps(tmp_path: Path) -> None:
    model = build_tiny_model("olmo2", vocab_size=300)
    source = open_source(save_tiny_model(model, tmp_path / "in"))
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, PrunePlan.identity(source.spec))
    keys = {kv.key: kv.value for kv in hyperparameters(pruned)}
    assert {k.removeprefix("olmo2.") for k in keys} == CONVERTER_KEYS
    assert keys["olmo2.attention.head_count_kv"] == 2 < keys["olmo2.attention.head_count"] == 4
    assert keys["olmo2.attention.key_length"] * 4 == keys["olmo2.embedding_length"] == 64


def test_tied_head_is_written_as_output(tmp_path: Path, byte_level_tokenizer_dir: Path) -> None:
    model = build_tiny_model("olmo2", vocab_size=2000, tied=True)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    plan = random_plan(2000, 160, 2, 1200, 96, seed=1)
    export(open_source(src), plan, tmp_path / "hf", "hf", ExportOptions(progress=False))
    gguf = the_gguf(export(open_source(src), plan, tmp_path / "gguf", "gguf",
                           ExportOptions(outtype="f32", progress=False)))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert reference.config.tie_word_embeddings
    prompt = [1, *np.random.default_rng(3).integers(3, reference.config.vocab_size, size=15).tolist()]
    with torch.no_grad():
        expected = reference(torch.tensor([prompt])).logits[0].numpy()
    got = llama_logits(load_llama(gguf), prompt)
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 2e-5


def test_gguf_refuses_a_head_size_llama_cpp_cannot_load(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_model("olmo2", vocab_size=2000, head_dim=32)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (128, 64)  # transformers takes head_dim
    folder = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    source = open_source(folder)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint()).save(tmp_path / "plan.json")
    case = Case("gguf-head-dim", lambda model, plan: None, "'head_dim' is 32", "config.json", ("--format", "gguf"))
    assert_refused(case, folder, plan, tmp_path, capsys)
