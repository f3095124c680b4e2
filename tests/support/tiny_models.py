"""Tiny random models of every supported family, built and saved at test time.

Each has hidden size 64, 2 layers and a vocabulary the size of a tiny trained tokenizer, so a
full export round trip takes a fraction of a second while exercising the real transformers
classes (biases for Qwen2, q/k norms for Qwen3 and Gemma3, sandwich norms for Gemma2/3, OLMo-2's
post-norms and whole-projection q/k norms with fewer kv heads, tied and untied embeddings).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2",
            "phi3", "granite", "smollm3"]
# Mixture-of-experts families (HF only so far, tests/test_moe_hf.py): 4 to 8 experts, top-2.
MOE_FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe"]

# Every special feature of a family switched on. Phi-3: partial rotary and LongRoPE with factors
# other than 1, the context scaled 4x over the original 256 (attention factor sqrt(1.25)).
FEATURES: dict[str, dict[str, object]] = {
    "phi3": {"max_position_embeddings": 1024, "original_max_position_embeddings": 256,
             "partial_rotary_factor": 0.5,
             "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                 "short_factor": [1.0, 1.3, 1.7, 2.5], "long_factor": [1.5, 2.0, 3.0, 4.5]}},
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 48},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
                  "shared_expert_intermediate_size": 80},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64},
    "olmoe": {"num_experts": 6, "num_experts_per_tok": 2, "intermediate_size": 64},
}


def tiny_config(model_type: str, vocab_size: int = 2000, tied: bool | None = None, **overrides: object):
    """A transformers config of `model_type` with tiny, deterministic dimensions."""
    kwargs: dict[str, object] = dict(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=vocab_size, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    if model_type in ("gemma2", "gemma3_text"):
        kwargs["sliding_window"] = 8
    if model_type == "granite":  # multipliers far from 1 (and the attention one from 1/sqrt(16)): none can be lost
        kwargs.update(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0156,
                      logits_scaling=8.0)
    if model_type == "smollm3":  # 4 layers: transformers' default no_rope_layers [1, 1, 1, 0] skips RoPE on the last
        kwargs["num_hidden_layers"] = 4
    kwargs.update(FEATURES.get(model_type, {}))
    if tied is not None:
        kwargs["tie_word_embeddings"] = tied
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny_model(model_type: str, seed: int = 0, vocab_size: int = 2000, tied: bool | None = None,
                     dtype: torch.dtype = torch.float32, **overrides: object) -> PreTrainedModel:
    """Random weights, including norms and biases (which start as constants otherwise)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size, tied, **overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return model.to(dtype).eval()


def save_tiny_model(model: PreTrainedModel, out_dir: Path, max_shard_size: str | int = "5GB",
                    tokenizer_dir: Path | None = None) -> Path:
    """save_pretrained plus, optionally, a tokenizer's files copied beside the weights."""
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            if f.is_file():
                shutil.copyfile(f, out_dir / f.name)
    return out_dir
