"""Tiny mixture-of-experts checkpoints on disk, in either expert layout, and plans that cut every expert its own way.

Shared by the MoE tests of each format (tests/test_moe_hf.py, tests/test_gguf_moe.py): the models themselves
come from tests/support/tiny_models.py (transformers' own config classes), saved here in the released
per-expert layout (one 2-D tensor per expert) or in transformers 5's stacked 3-D one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from converter.plan import PrunePlan
from tests.support.reference_moe import random_moe_plan

LAYOUTS = ("per_expert", "stacked")
# What llama.cpp's graphs hard-code, set where transformers' default differs (the GGUF exporter refuses the
# default): qwen3moe always renormalises the top-k router weights; olmoe's k norm is hidden wide (kv heads = heads).
LLAMA_CPP_LOADABLE: dict[str, dict[str, object]] = {"qwen3_moe": {"norm_topk_prob": True},
                                                    "olmoe": {"num_key_value_heads": 4}}
# The config keys that hold each family's expert width.
EXPERT_WIDTH = {"qwen3_moe": "moe_intermediate_size", "qwen2_moe": "moe_intermediate_size",
                "mixtral": "intermediate_size", "olmoe": "intermediate_size"}


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def save_moe_model(model: PreTrainedModel, folder: Path, layout: str, tokenizer_dir: Path | None = None) -> Path:
    """save_pretrained in the released per-expert layout, or in transformers 5's stacked one."""
    model.save_pretrained(folder, save_original_format=layout == "per_expert")
    stacked = any(".experts.gate_up_proj" in name for name in tensors_of(folder))
    assert stacked == (layout == "stacked")
    for f in tokenizer_dir.iterdir() if tokenizer_dir is not None else ():
        shutil.copyfile(f, folder / f.name)
    return folder


def moe_plan(model: PreTrainedModel, keep_tokens: int | None, seed: int, expert_cut: int = 16) -> PrunePlan:
    """Every expert keeps its own random `width - expert_cut` channels, a shared expert half of its channels,
    and `keep_tokens` random tokens (all when None)."""
    cfg = model.config
    width = getattr(cfg, EXPERT_WIDTH[cfg.model_type])
    shared = getattr(cfg, "shared_expert_intermediate_size", 0)
    # Widths stay multiples of 8: transformers' grouped_mm experts kernel on CPU needs rows of 16-byte multiples.
    return random_moe_plan(cfg.vocab_size, cfg.num_hidden_layers, cfg.num_experts, width, width - expert_cut,
                           ffn=shared, keep_ffn=shared // 2, keep_tokens=keep_tokens, seed=seed)


def unrouted_expert_model(folder: Path, tokenizer_dir: Path, **overrides: object) -> Path:
    """A tiny Qwen3-MoE whose layer 0 never routes to expert 3, saved to `folder`.

    Hidden channel 0 of layer 0's router input is positive for every token (embedding column 0 a
    constant, no attention output into it, norm weight 1) and the router weighs it -50 for expert 3,
    so expert 3's logit is far below every other's and it is never in the top 2 of layer 0.
    """
    from transformers import AutoModelForCausalLM

    from tests.support.score_fixtures import tiny_model_dir

    tiny_model_dir(folder, tokenizer_dir, "qwen3_moe", **overrides)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 2.0
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight[0] = 0.0
        layer.post_attention_layernorm.weight[0] = 1.0
        layer.mlp.gate.weight[3, 0] = -50.0
    model.save_pretrained(folder)
    return folder
