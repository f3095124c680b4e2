"""Initializer names of the fused graph, shared by the weight writer and the graph builder.

A projection `base` is stored as `{base}.weight` ([K, N], the MatMul layout) in float types, or as
`{base}.weight_Q{bits}` and `{base}.weight_scales` (MatMulNBits' B and scales) when quantized, plus
`{base}.weight_zero_points` when asymmetric;
its bias, if any, is `{base}.bias`. Packed q/k/v live under `attn.qkv_proj`, as in the builder, and
packed gate/up rows under `mlp.gate_up_proj`.
"""
from __future__ import annotations

EMBED = "model.embed_tokens"
LM_HEAD = "lm_head"
FINAL_NORM = "model.norm.weight"
COS, SIN = "cos_cache", "sin_cache"  # the default table; a layer type's own (Gemma 3) adds its suffix
QKV, O_PROJ = "attn.qkv_proj", "attn.o_proj"
GATE_UP, DOWN = "mlp.gate_up_proj", "mlp.down_proj"
INPUT_NORM, POST_NORM = "input_layernorm.weight", "post_attention_layernorm.weight"
Q_NORM, K_NORM = "attn.q_norm.weight", "attn.k_norm.weight"
# Gemma 2/3's sandwich norms: attention and MLP outputs, normed before the residual add (POST_NORM
# then holds pre_feedforward_layernorm, the norm in front of the MLP, as in Llama).
ATTN_OUT_NORM, MLP_OUT_NORM = "attn_out_layernorm.weight", "mlp_out_layernorm.weight"


def rotary(table: str, rope: str) -> str:
    """The cos or sin cache of one rotary table (rope: the layer type, "default" when there is one)."""
    return table if rope == "default" else f"{table}.{rope}"


def in_layer(layer: int, part: str) -> str:
    return f"model.layers.{layer}.{part}"


def weight(base: str, bits: int | None) -> str:
    return f"{base}.weight" if bits is None else f"{base}.weight_Q{bits}"


def scales(base: str) -> str:
    return f"{base}.weight_scales"


def zero_points(base: str) -> str:
    return f"{base}.weight_zero_points"


def bias(base: str) -> str:
    return f"{base}.bias"
