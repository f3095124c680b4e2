"""llama.cpp's conventions for each family, as data: GGUF architecture, tensor names, transforms.

The roles are those of the family tables in families.py; this table says what llama.cpp calls
each role and which llama.cpp-specific rewrites apply, following llama.cpp's own converter
(convert_hf_to_gguf.py and gguf-py's tensor_mapping.py / constants.py):

- `permute_qk`: the llama architecture stores q/k rows with each head's two rotary halves
  interleaved (LlamaModel.permute in the converter); `(heads, 2, head_dim/2)` becomes
  `(heads, head_dim/2, 2)`, for weights and biases alike.
- `activation`: the config key naming the FFN activation and the values llama.cpp's graph
  computes for the family (the first is the default when the key is absent).
- `norm_offset`: Gemma's RMSNorm multiplies by (1 + w); llama.cpp multiplies by w, so the
  converter adds 1 to every tensor whose role ends in "norm".
- `lm_head`: "output" when llama.cpp's graph loads an untied `output` tensor, "absent" when it
  always reuses the embedding (gemma, gemma2), so an untied head cannot be expressed.
- `sliding_window`: "none" (a sliding window is an error), "cap_context" (llama.cpp's llama
  graph has no window: the context length is capped at the window, below which the two agree),
  "per_layer" (window size plus a per-layer pattern from config `layer_types`).
- `rope_scaling`: the HF `rope_type`s the GGUF can express for the (full-attention) rope.
- `softcapping`: config keys written as GGUF softcapping keys when set; `unsupported_keys` are
  config keys that must be unset (null) because llama.cpp's graph for the family ignores them;
  `softcapping_always` when llama.cpp soft-caps even without the key (then it must be set).
- `attention_scale`: "query_pre_attn_scalar" when llama.cpp hard-codes the Gemma attention scale
  (1/sqrt(head_dim), or 1/sqrt(hidden/heads) for `per_head_scale_layers` layer counts), so a
  config whose query_pre_attn_scalar says otherwise cannot be expressed.
- `rope_base_swa`: the sliding layers' rope base comes from rope_parameters["sliding_attention"].
"""
from __future__ import annotations

TENSOR_NAMES: dict[str, str] = {
    "embed": "token_embd.weight",
    "lm_head": "output.weight",
    "output_norm": "output_norm.weight",
    "attn_norm": "blk.{layer}.attn_norm.weight",
    "attn_q": "blk.{layer}.attn_q.weight",
    "attn_k": "blk.{layer}.attn_k.weight",
    "attn_v": "blk.{layer}.attn_v.weight",
    "attn_output": "blk.{layer}.attn_output.weight",
    "attn_q_bias": "blk.{layer}.attn_q.bias",
    "attn_k_bias": "blk.{layer}.attn_k.bias",
    "attn_v_bias": "blk.{layer}.attn_v.bias",
    "attn_q_norm": "blk.{layer}.attn_q_norm.weight",
    "attn_k_norm": "blk.{layer}.attn_k_norm.weight",
    "post_attention_norm": "blk.{layer}.post_attention_norm.weight",
    "ffn_norm": "blk.{layer}.ffn_norm.weight",
    "post_ffw_norm": "blk.{layer}.post_ffw_norm.weight",
    "ffn_gate": "blk.{layer}.ffn_gate.weight",
    "ffn_up": "blk.{layer}.ffn_up.weight",
    "ffn_down": "blk.{layer}.ffn_down.weight",
}

# The per-layer rope frequency factors llama.cpp's llama graph reads for rope_type "llama3".
ROPE_FREQS_NAME = "rope_freqs.weight"

# Roles whose rows the llama permutation reorders, and with how many heads.
PERMUTED_ROLES: dict[str, str] = {"attn_q": "heads", "attn_q_bias": "heads", "attn_k": "kv_heads",
                                  "attn_k_bias": "kv_heads"}

GGUF_FAMILIES: dict[str, dict[str, object]] = {
    "llama": {
        "arch": "llama",
        "activation": ("hidden_act", ["silu"]),
        "permute_qk": True,
        "norm_offset": 0.0,
        "lm_head": "output",
        "sliding_window": "cap_context",
        "rope_scaling": ["default", "linear", "yarn", "llama3"],
        "softcapping": {},
        "unsupported_keys": ["attn_logit_softcapping", "final_logit_softcapping"],
        "softcapping_always": False,
        "attention_scale": None,
        "rope_base_swa": False,
    },
    "qwen2": {
        "arch": "qwen2",
        "activation": ("hidden_act", ["silu"]),
        "permute_qk": False,
        "norm_offset": 0.0,
        "lm_head": "output",
        "sliding_window": "none",
        "rope_scaling": ["default", "linear", "yarn"],
        "softcapping": {},
        "unsupported_keys": ["attn_logit_softcapping", "final_logit_softcapping"],
        "softcapping_always": False,
        "attention_scale": None,
        "rope_base_swa": False,
    },
    "qwen3": {
        "arch": "qwen3",
        "activation": ("hidden_act", ["silu"]),
        "permute_qk": False,
        "norm_offset": 0.0,
        "lm_head": "output",
        "sliding_window": "none",
        "rope_scaling": ["default", "linear", "yarn"],
        "softcapping": {},
        "unsupported_keys": ["attn_logit_softcapping", "final_logit_softcapping"],
        "softcapping_always": False,
        "attention_scale": None,
        "rope_base_swa": False,
    },
    "gemma": {
        "arch": "gemma",
        "activation": ("hidden_act", ["gelu_pytorch_tanh", "gelu"]),
        "permute_qk": False,
        "norm_offset": 1.0,
        "lm_head": "absent",
        "sliding_window": "none",
        "rope_scaling": ["default"],
        "softcapping": {},
        "unsupported_keys": ["attn_logit_softcapping", "final_logit_softcapping"],
        "softcapping_always": False,
        "attention_scale": None,
        "rope_base_swa": False,
    },
    "gemma2": {
        "arch": "gemma2",
        "activation": ("hidden_activation", ["gelu_pytorch_tanh"]),
        "permute_qk": False,
        "norm_offset": 1.0,
        "lm_head": "absent",
        "sliding_window": "per_layer",
        "rope_scaling": ["default"],
        "softcapping": {"attn_logit_softcapping": "{arch}.attn_logit_softcapping",
                        "final_logit_softcapping": "{arch}.final_logit_softcapping"},
        "unsupported_keys": [],
        "softcapping_always": True,
        "attention_scale": {"key": "query_pre_attn_scalar", "default": 256, "per_head_scale_layers": [46]},
        "rope_base_swa": False,
    },
    "gemma3": {
        "arch": "gemma3",
        "activation": ("hidden_activation", ["gelu_pytorch_tanh"]),
        "permute_qk": False,
        "norm_offset": 1.0,
        "lm_head": "output",
        "sliding_window": "per_layer",
        "rope_scaling": ["default", "linear"],
        "softcapping": {"final_logit_softcapping": "{arch}.final_logit_softcapping"},
        "unsupported_keys": ["attn_logit_softcapping"],
        "softcapping_always": False,
        "attention_scale": {"key": "query_pre_attn_scalar", "default": 256, "per_head_scale_layers": [62]},
        "rope_base_swa": True,
    },
}
