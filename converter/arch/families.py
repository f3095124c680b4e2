"""Family tables: every tensor of each supported architecture, as data.

A tensor is a name template (with `{layer}`), a role and its shape written in named dimensions.
Dimensions named `vocab` are cut by the vocabulary keep set and dimensions named `ffn` by the
kept FFN channels, so the coupling of axes (embedding rows with lm_head rows, gate/up rows with
down_proj columns) follows from the shapes alone. Compare mergekit's architecture JSON files and
gguf-py's tensor_mapping.py. Quirks are named flags that exporters look up.
"""
from __future__ import annotations

LAYER = "model.layers.{layer}."

_ATTENTION = [
    (LAYER + "self_attn.q_proj.weight", "attn_q", ("q_dim", "hidden")),
    (LAYER + "self_attn.k_proj.weight", "attn_k", ("kv_dim", "hidden")),
    (LAYER + "self_attn.v_proj.weight", "attn_v", ("kv_dim", "hidden")),
    (LAYER + "self_attn.o_proj.weight", "attn_output", ("hidden", "q_dim")),
]
_ATTENTION_BIAS = [
    (LAYER + "self_attn.q_proj.bias", "attn_q_bias", ("q_dim",)),
    (LAYER + "self_attn.k_proj.bias", "attn_k_bias", ("kv_dim",)),
    (LAYER + "self_attn.v_proj.bias", "attn_v_bias", ("kv_dim",)),
]
_QK_NORM = [
    (LAYER + "self_attn.q_norm.weight", "attn_q_norm", ("head_dim",)),
    (LAYER + "self_attn.k_norm.weight", "attn_k_norm", ("head_dim",)),
]
_MLP = [
    (LAYER + "mlp.gate_proj.weight", "ffn_gate", ("ffn", "hidden")),
    (LAYER + "mlp.up_proj.weight", "ffn_up", ("ffn", "hidden")),
    (LAYER + "mlp.down_proj.weight", "ffn_down", ("hidden", "ffn")),
]
_NORMS = [
    (LAYER + "input_layernorm.weight", "attn_norm", ("hidden",)),
    (LAYER + "post_attention_layernorm.weight", "ffn_norm", ("hidden",)),
]
_SANDWICH_NORMS = [
    (LAYER + "input_layernorm.weight", "attn_norm", ("hidden",)),
    (LAYER + "post_attention_layernorm.weight", "post_attention_norm", ("hidden",)),
    (LAYER + "pre_feedforward_layernorm.weight", "ffn_norm", ("hidden",)),
    (LAYER + "post_feedforward_layernorm.weight", "post_ffw_norm", ("hidden",)),
]
_GLOBAL = [
    ("model.embed_tokens.weight", "embed", ("vocab", "hidden")),
    ("model.norm.weight", "output_norm", ("hidden",)),
    ("lm_head.weight", "lm_head", ("vocab", "hidden")),
]

# Each family: the `architectures` names and `model_type`s it covers, its tensors, and quirks.
FAMILIES: dict[str, dict[str, object]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM", "MistralForCausalLM"],
        "model_types": ["llama", "mistral"],
        "tensors": _GLOBAL + _ATTENTION + _MLP + _NORMS,
        "optional_tensors": _ATTENTION_BIAS,
        "quirks": [],
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_types": ["qwen2"],
        "tensors": _GLOBAL + _ATTENTION + _ATTENTION_BIAS + _MLP + _NORMS,
        "optional_tensors": [],
        "quirks": [],
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_types": ["qwen3"],
        "tensors": _GLOBAL + _ATTENTION + _QK_NORM + _MLP + _NORMS,
        "optional_tensors": _ATTENTION_BIAS,
        "quirks": [],
    },
    "gemma": {
        "architectures": ["GemmaForCausalLM"],
        "model_types": ["gemma"],
        "tensors": _GLOBAL + _ATTENTION + _MLP + _NORMS,
        "optional_tensors": [],
        "quirks": ["norm_plus_one", "embed_scale_sqrt_hidden"],
    },
    "gemma2": {
        "architectures": ["Gemma2ForCausalLM"],
        "model_types": ["gemma2"],
        "tensors": _GLOBAL + _ATTENTION + _MLP + _SANDWICH_NORMS,
        "optional_tensors": [],
        "quirks": ["norm_plus_one", "embed_scale_sqrt_hidden", "softcapping", "sliding_window"],
    },
    "gemma3": {
        "architectures": ["Gemma3ForCausalLM"],
        "model_types": ["gemma3_text"],
        "tensors": _GLOBAL + _ATTENTION + _QK_NORM + _MLP + _SANDWICH_NORMS,
        "optional_tensors": [],
        "quirks": ["norm_plus_one", "embed_scale_sqrt_hidden", "softcapping", "sliding_window"],
    },
}
