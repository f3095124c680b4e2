"""llama.cpp's conventions, as data: tensor names by role, and the record of what its graph for a family computes.

The roles are those of the family tables in families.py; `TENSOR_NAMES` says what llama.cpp
calls each role, and a family's `GgufConventions` (its `gguf` field) which llama.cpp-specific
rewrites and refusals apply. Both follow llama.cpp's own converter (convert_hf_to_gguf.py and
gguf-py's tensor_mapping.py / constants.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    # Fused tensors llama.cpp keeps fused (phi3): q, k and v rows; gate rows then up rows under ffn_up.
    "attn_qkv": "blk.{layer}.attn_qkv.weight",
    "ffn_gate_up": "blk.{layer}.ffn_up.weight",
    # Mixture of experts: the router, and Qwen2-MoE's shared expert with its one-row sigmoid gate.
    "ffn_gate_inp": "blk.{layer}.ffn_gate_inp.weight",
    "ffn_gate_shexp": "blk.{layer}.ffn_gate_shexp.weight",
    "ffn_up_shexp": "blk.{layer}.ffn_up_shexp.weight",
    "ffn_down_shexp": "blk.{layer}.ffn_down_shexp.weight",
    "ffn_gate_inp_shexp": "blk.{layer}.ffn_gate_inp_shexp.weight",
}
# Expert weights are one stacked [experts, rows, cols] tensor per projection in a GGUF, whatever the checkpoint's
# layout: a per-expert role names the stack its experts' 2-D tensors go into; a stacked role names the stacks
# its row blocks become, in order (transformers' gate_up_proj: gate rows, then up rows).
EXPERT_STACKS: dict[str, tuple[str, ...]] = {
    "ffn_gate_exp": ("blk.{layer}.ffn_gate_exps.weight",),
    "ffn_up_exp": ("blk.{layer}.ffn_up_exps.weight",),
    "ffn_down_exp": ("blk.{layer}.ffn_down_exps.weight",),
    "ffn_gate_up_exps": ("blk.{layer}.ffn_gate_exps.weight", "blk.{layer}.ffn_up_exps.weight"),
    "ffn_down_exps": ("blk.{layer}.ffn_down_exps.weight",),
}
# Roles llama.cpp's converter and quantizer always keep in F32 (the routers' logits decide which experts run).
F32_ROLES = frozenset({"ffn_gate_inp", "ffn_gate_inp_shexp"})
# The `{arch}.*` keys that size FFNs; see GgufConventions.ffn_lengths.
FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
EXPERT_FEED_FORWARD_LENGTH = "{arch}.expert_feed_forward_length"
EXPERT_SHARED_FEED_FORWARD_LENGTH = "{arch}.expert_shared_feed_forward_length"

# The per-layer rope frequency factors llama.cpp's llama graph reads for rope_type "llama3".
ROPE_FREQS_NAME = "rope_freqs.weight"
# The LongRoPE frequency factors llama.cpp's phi3 graph reads: long ones when the context exceeds
# `rope.scaling.original_context_length`, short ones otherwise.
ROPE_FACTORS_NAMES = {"long_factor": "rope_factors_long.weight", "short_factor": "rope_factors_short.weight"}

# Roles whose rows the llama permutation reorders, and with how many heads.
PERMUTED_ROLES: dict[str, str] = {"attn_q": "heads", "attn_q_bias": "heads", "attn_k": "kv_heads",
                                  "attn_k_bias": "kv_heads"}

SOFTCAPPING_KEYS = ("attn_logit_softcapping", "final_logit_softcapping")
# Granite's multipliers as llama.cpp's converter writes them (the `scales` of GgufConventions).
GRANITE_SCALES = (("embedding_multiplier", "{arch}.embedding_scale", 1.0),
                  ("residual_multiplier", "{arch}.residual_scale", 1.0),
                  ("attention_multiplier", "{arch}.attention.scale", 1.0),
                  ("logits_scaling", "{arch}.logit_scale", 1.0))


@dataclass(frozen=True)
class GgufConventions:
    """What llama.cpp's graph for one family computes, and so what a GGUF of it can and cannot say.

    The defaults describe llama.cpp's plain decoder (Qwen2's): a family states where it differs.
    """

    # The GGUF `general.architecture`, which also prefixes every `{arch}.*` key.
    arch: str
    # The config key naming the FFN activation and the values llama.cpp's graph computes for the
    # family; the first is the default when the key is absent.
    activation_key: str = "hidden_act"
    activations: tuple[str, ...] = ("silu",)
    # "output" when llama.cpp's graph loads an untied `output` tensor, "absent" when it always
    # reuses the embedding (gemma, gemma2), so an untied head cannot be expressed; "required" when
    # it always loads `output` (olmo2), so a tied head is written as a copy of the embedding.
    lm_head: Literal["output", "absent", "required"] = "output"
    # The llama architecture stores q/k rows with each head's two rotary halves interleaved
    # (LlamaModel.permute in the converter): `(heads, 2, head_dim/2)` becomes
    # `(heads, head_dim/2, 2)`, for weights and biases alike (the roles in PERMUTED_ROLES).
    permute_qk: bool = False
    # "none": a sliding window is an error; "cap_context": llama.cpp's graph has no window, so the
    # context length is capped at the window, below which the two agree; "per_layer": window size
    # plus a per-layer pattern from config `layer_types`.
    sliding_window: Literal["none", "cap_context", "per_layer"] = "none"
    # The HF `rope_type`s the GGUF can express for the (full-attention) rope.
    rope_scaling: tuple[str, ...] = ("default", "linear", "yarn")
    # (config key, GGUF key template) pairs written as GGUF softcapping keys when the key is set.
    softcapping: tuple[tuple[str, str], ...] = ()
    # When llama.cpp soft-caps even without the key, so every key of `softcapping` must be set.
    softcapping_always: bool = False
    # Config keys that must be unset (null) because llama.cpp's graph for the family ignores them.
    unsupported_keys: tuple[str, ...] = SOFTCAPPING_KEYS
    # Layer counts for which llama.cpp hard-codes the attention scale 1/sqrt(hidden/heads) rather
    # than 1/sqrt(head_dim) (the 27B Gemmas), which a family's configurable scale must then equal.
    per_head_scale_layers: tuple[int, ...] = ()
    # The sliding layers' rope base comes from rope_parameters["sliding_attention"] (`rope.freq_base_swa`).
    rope_base_swa: bool = False
    # llama.cpp's graph skips RoPE on layer i exactly when (i + 1) % step == 0, a step hard-coded
    # in the runtime (smollm3: 4) and written in no GGUF key; None: it rotates every layer. A
    # model's no-RoPE layers must match that pattern (exporters.gguf.hparams refuses any other).
    no_rope_step: int | None = None
    # (config key, GGUF key template, transformers' default when the key is absent): plain factors
    # llama.cpp's graph reads as written (Granite's embedding, residual, attention and logit
    # multipliers); always written, since the graph's own defaults differ from transformers'.
    scales: tuple[tuple[str, str, float], ...] = ()
    # Whether `{arch}.attention.key_length`/`value_length` are written. llama.cpp's converter drops
    # config `head_dim` for Granite, whose graph then takes hidden/heads, so any other head size is refused.
    head_dim_keys: bool = True
    # llama.cpp rotates only the first `rope.dimension_count` = head_dim * partial_rotary_factor
    # dimensions of each head (phi3), as transformers does; False: a partial factor is refused.
    partial_rotary: bool = False
    # llama.cpp's converter always writes `{arch}.attention.sliding_window` (0 when unset) and
    # `rope.scaling.original_context_length`, and LongRoPE as factor tensors plus an attention
    # factor (phi3); its graph ignores the window (hence `sliding_window` "cap_context").
    phi3_keys: bool = False
    # Whether `{arch}.vocab_size` is written (llama.cpp's phi3 converter does not; the runtime counts tokens).
    vocab_size_key: bool = True
    # Whether `{arch}.rope.dimension_count` is written (llama.cpp's olmo2 converter does not; its graph
    # then rotates the whole head, as transformers does for the family).
    rope_dimension_key: bool = True
    # llama.cpp's graph sizes q and the attention output hidden x hidden (olmo2), so only
    # head_dim = hidden / heads loads; any other head size is refused.
    q_dim_is_hidden: bool = False
    # llama.cpp's graph sizes the k norm hidden wide (olmoe), so only kv heads = heads loads.
    k_norm_is_hidden: bool = False
    # (GGUF key template, what it holds) for the FFN widths: the pruned size of a named dimension ("ffn": a dense
    # MLP's or Qwen2-MoE's shared expert's; "moe_ffn": every routed expert's), or "=key": the config's own value
    # written unchanged (the Qwen MoE converters write the unused dense `intermediate_size`), left out when unset.
    ffn_lengths: tuple[tuple[str, str], ...] = ((FEED_FORWARD_LENGTH, "ffn"),)
    # Mixture of experts: whether llama.cpp's graph renormalises the chosen experts' router weights to sum to 1
    # (hard-coded per graph: no GGUF key changes it), and the config key by which transformers decides the same,
    # False when unset (None: transformers always renormalises, Mixtral). A model that disagrees is refused.
    expert_weights_norm: bool = False
    norm_topk_key: str | None = "norm_topk_prob"

    @property
    def computes_gelu(self) -> bool:
        """ggml's CPU GELU reads an fp16 table, so such a graph carries ~1e-4 relative error."""
        return any(a.startswith("gelu") for a in self.activations)
