"""OLMo-2's GGUF conventions, checked where the family tests cannot see them.

The family tests (test_spine, test_gguf_tiny, test_onnx_families) run the tiny OLMo-2 (GQA: 4
heads, 2 kv heads, so the k norm spans 32 values and the q norm 64) against transformers. Here:
that its GGUF keys are the ones llama.cpp's own converter writes for an olmo2 checkpoint (no
`vocab_size`, no `rope.dimension_count`: an identity-plan GGUF compared by hand with
convert_hf_to_gguf.py's had every tensor bit-identical and these keys as the only difference), and
that a config `head_dim` other than hidden / heads, which transformers honours but llama.cpp's
olmo2 graph cannot load (it sizes q and the attention output hidden x hidden), is refused in one
line naming config.json, before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.source import open_source
from exporters.gguf.hparams import hyperparameters
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


def test_gguf_refuses_a_head_size_llama_cpp_cannot_load(tmp_path: Path, byte_level_tokenizer_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_model("olmo2", vocab_size=2000, head_dim=32)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (128, 64)  # transformers takes head_dim
    folder = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    source = open_source(folder)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint()).save(tmp_path / "plan.json")
    case = Case("gguf-head-dim", lambda model, plan: None, "'head_dim' is 32", "config.json", ("--format", "gguf"))
    assert_refused(case, folder, plan, tmp_path, capsys)
