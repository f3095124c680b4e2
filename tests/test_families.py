"""The family records against transformers and against each other.

Each fact of a family is stated once, in its record; these tests check that the facts agree with
the transformers classes they describe (tied default, embedding scale, soft-capping keys, the
default sliding pattern, the model type) and that a record's llama.cpp conventions fit its own
conventions wherever the GGUF exporter combines the two.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from transformers import AutoConfig

from converter.arch import ModelDims, resolve_arch, supported_architectures
from converter.arch.families import FAMILIES, Family, gguf_conventions_of
from converter.arch.gguf_names import SOFTCAPPING_KEYS
from tests.support.tiny_models import FAMILIES as MODEL_TYPES
from tests.support.tiny_models import MOE_FAMILIES
from tests.support.tiny_models import build_tiny_model


def _family(model_type: str) -> Family:
    return next(f for f in FAMILIES.values() if model_type in f.model_types)


def test_every_model_type_and_architecture_belongs_to_one_family() -> None:
    model_types = [t for f in FAMILIES.values() for t in f.model_types]
    architectures = [a for f in FAMILIES.values() for a in f.architectures]
    assert len(set(model_types)) == len(model_types) and len(set(architectures)) == len(architectures)
    assert supported_architectures() == sorted(architectures)
    # Multimodal records (their text model is a listed family's) have their own tests: tests/test_gemma3_multimodal.py.
    assert sorted(t for f in FAMILIES.values() if f.text_config is None for t in f.model_types) == sorted(
        MODEL_TYPES + MOE_FAMILIES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_record_agrees_with_transformers(model_type: str) -> None:
    family = _family(model_type)
    config = AutoConfig.for_model(model_type, num_hidden_layers=12)
    assert config.tie_word_embeddings == family.tied_embeddings
    for key in SOFTCAPPING_KEYS:
        assert hasattr(config, key) == (key in family.softcapping), key
    if family.sliding_window == "layer_types" and family.sliding_window_pattern > 1:
        n = family.sliding_window_pattern
        assert config.layer_types == ["full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(12)]
    # The factors a GGUF writes when config.json lacks them are transformers' defaults.
    for key, _, default in family.gguf.scales if family.gguf is not None else ():
        assert getattr(config, key) == default, key
    model = build_tiny_model(model_type)
    scale = getattr(model.model.embed_tokens, "embed_scale", None)
    assert (scale is not None) == family.embed_scale_sqrt_hidden
    if scale is not None:
        assert math.isclose(float(scale), math.sqrt(model.config.hidden_size), rel_tol=1e-6)
    spec = resolve_arch(model.config.to_dict(), Path("config.json"))
    assert spec.family_record is family and spec.family == family.name


def test_fused_shapes_are_sums_of_multiples_of_named_dimensions() -> None:
    dims = ModelDims(vocab=100, hidden=64, ffn=160, layers=2, heads=4, kv_heads=2, head_dim=16)
    assert dims.size("2*ffn") == 320 and dims.size("q_dim+2*kv_dim") == 64 + 2 * 32
    assert [dims.size(d) for d in ("vocab", "q_dim", "kv_dim", "head_dim")] == [100, 64, 32, 16]


# Mixture-of-experts records have no GGUF conventions yet (issue 23: HF first); the GGUF export refuses them.
@pytest.mark.parametrize("family", [f for f in FAMILIES.values() if f.moe_ffn_key is None],
                         ids=[name for name, f in FAMILIES.items() if f.moe_ffn_key is None])
def test_llama_cpp_conventions_fit_the_family(family: Family) -> None:
    llama_cpp = family.gguf
    assert llama_cpp is not None and gguf_conventions_of(llama_cpp.arch) is llama_cpp
    written = {key for key, _ in llama_cpp.softcapping}
    # A key the family's model applies is written into the GGUF or refused, never dropped.
    assert set(family.softcapping) <= written | set(llama_cpp.unsupported_keys)
    assert written <= set(family.softcapping)
    # Per-layer windows without config layer_types fall back on the family's default pattern.
    assert llama_cpp.sliding_window != "per_layer" or family.sliding_window_pattern > 1
    # The model-level factors the ONNX prologue/epilogue apply reach llama.cpp as scales too.
    assert {family.embedding_multiplier, family.logits_divisor} - {None} <= {key for key, _, _ in llama_cpp.scales}
    # llama.cpp hard-codes the scale that the family's config may change.
    assert bool(llama_cpp.per_head_scale_layers) == (family.attention_scale is not None)
