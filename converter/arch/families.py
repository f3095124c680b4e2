"""Family records: every supported architecture as one typed, frozen record.

A family states its tensors and its conventions once. A tensor is a name template (with
`{layer}`), a role and its shape written in named dimensions. Dimensions named `vocab` are cut
by the vocabulary keep set and dimensions named `ffn` by the kept FFN channels, so the coupling
of axes (embedding rows with lm_head rows, gate/up rows with down_proj columns) follows from the
shapes alone. The conventions are the facts exporters and checks read (norm offset, embedding
scale, soft-capping, sliding windows, attention scale) and, in `gguf`, what llama.cpp's graph
for the family computes. A family that differs from another in a few facts is written as
`dataclasses.replace` of it, naming only those. Compare mergekit's architecture JSON files and
gguf-py's tensor_mapping.py.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from converter.arch.gguf_names import (
    EXPERT_FEED_FORWARD_LENGTH,
    EXPERT_SHARED_FEED_FORWARD_LENGTH,
    FEED_FORWARD_LENGTH,
    GRANITE_SCALES,
    SOFTCAPPING_KEYS,
    GgufConventions,
)

LAYER = "model.layers.{layer}."


@dataclass(frozen=True)
class TensorTemplate:
    """One tensor of a family: name template, role, shape in named dimensions, and whether it must exist."""

    name: str
    role: str
    shape: tuple[str, ...]
    required: bool = True
    # Expert tensors come in alternative on-disk layouts (stacked 3-D, or one 2-D tensor per `{expert}`):
    # a checkpoint holds every tensor of exactly one of them (converter.arch.check).
    layout: str | None = None

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.name

    @property
    def per_expert(self) -> bool:
        return "{expert}" in self.name


@dataclass(frozen=True)
class AttentionScale:
    """Attention scores scaled by 1/sqrt(config[key]) (`default` when unset) instead of 1/sqrt(head_dim)."""

    key: str
    default: float


@dataclass(frozen=True)
class Family:
    """One supported architecture: which configs it covers, its tensors, and its conventions."""

    name: str
    # config `architectures[0]` values it covers; `model_types` are matched when that is absent.
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    tensors: tuple[TensorTemplate, ...]
    # Whether the lm_head reuses the embedding when config.json has no `tie_word_embeddings`.
    tied_embeddings: bool = False
    # RMSNorm multiplies by (norm_offset + w): Gemma's (1 + w), where llama.cpp multiplies by w.
    norm_offset: float = 0.0
    # Whether the embedding output is multiplied by sqrt(hidden) (Gemma); transformers keeps the
    # factor on the embedding module as `embed_scale`.
    embed_scale_sqrt_hidden: bool = False
    # The soft-capping config keys the transformers model applies when they are set.
    softcapping: tuple[str, ...] = ()
    # Where a layer's sliding window comes from: "config" (a config `sliding_window`, if any,
    # applies to every layer: Mistral) or "layer_types" (config `layer_types` marks sliding layers).
    sliding_window: Literal["config", "layer_types"] = "config"
    # Without `layer_types` or `sliding_window_pattern` in the config, every n-th layer has full
    # attention and the others slide (transformers' default for the family; 1: none slides).
    sliding_window_pattern: int = 1
    # The rotary embedding has one table per layer type (local and global rope bases: Gemma 3).
    rope_per_layer_type: bool = False
    attention_scale: AttentionScale | None = None
    # Some layers apply no RoPE (SmolLM3): config `no_rope_layers` lists 1 (rotate) or 0 (no rotary)
    # per layer; without it every n-th layer skips, n = config `no_rope_layer_interval` or this
    # default (converter.arch.rotary_layers reads it). None: every layer rotates.
    no_rope_interval: int | None = None
    # Config keys of factors the model applies outside its decoder layers (Granite): the embedding
    # output is multiplied by config[embedding_multiplier], the logits divided by config[logits_divisor].
    embedding_multiplier: str | None = None
    logits_divisor: str | None = None
    # Whether the ONNX exporter has a recipe for the family (its decoder layers trace faithfully).
    onnx: bool = True
    # The model type genai_config.json names when onnxruntime-genai does not know the config's own
    # (it refuses unknown types, and runs every plain decoder graph alike); None: config `model_type`.
    genai_model_type: str | None = None
    # llama.cpp's conventions for the family; None when llama.cpp has no graph for it.
    gguf: GgufConventions | None = None
    # The config key of the `ffn` dimension (a dense MLP's width; Qwen2-MoE's shared expert's), None when
    # the model has no dense FFN. Mixture of experts: the key of every expert's width (`moe_ffn`) and
    # the keys of the expert count, the first present wins; None and () for dense models.
    ffn_key: str | None = "intermediate_size"
    moe_ffn_key: str | None = None
    experts_keys: tuple[str, ...] = ()
    # Multimodal checkpoints (Gemma 3 4B/12B/27B): the config section that describes the language model
    # (None: the top level is it), the values transformers' text config class takes for keys the section
    # leaves out, the prefix in front of every template name, and the name prefixes of the other towers'
    # tensors, copied unchanged into HF output and left out of GGUF and ONNX.
    text_config: str | None = None
    text_defaults: tuple[tuple[str, object], ...] = ()
    text_prefix: str = ""
    passthrough: tuple[str, ...] = ()


def optional(*tensors: TensorTemplate) -> tuple[TensorTemplate, ...]:
    """The same tensors, allowed to be absent (checkpoints that do or do not carry them)."""
    return tuple(replace(t, required=False) for t in tensors)


_ATTENTION = (
    TensorTemplate(LAYER + "self_attn.q_proj.weight", "attn_q", ("q_dim", "hidden")),
    TensorTemplate(LAYER + "self_attn.k_proj.weight", "attn_k", ("kv_dim", "hidden")),
    TensorTemplate(LAYER + "self_attn.v_proj.weight", "attn_v", ("kv_dim", "hidden")),
    TensorTemplate(LAYER + "self_attn.o_proj.weight", "attn_output", ("hidden", "q_dim")),
)
_ATTENTION_BIAS = (
    TensorTemplate(LAYER + "self_attn.q_proj.bias", "attn_q_bias", ("q_dim",)),
    TensorTemplate(LAYER + "self_attn.k_proj.bias", "attn_k_bias", ("kv_dim",)),
    TensorTemplate(LAYER + "self_attn.v_proj.bias", "attn_v_bias", ("kv_dim",)),
)
_QK_NORM = (
    TensorTemplate(LAYER + "self_attn.q_norm.weight", "attn_q_norm", ("head_dim",)),
    TensorTemplate(LAYER + "self_attn.k_norm.weight", "attn_k_norm", ("head_dim",)),
)
_MLP = (
    TensorTemplate(LAYER + "mlp.gate_proj.weight", "ffn_gate", ("ffn", "hidden")),
    TensorTemplate(LAYER + "mlp.up_proj.weight", "ffn_up", ("ffn", "hidden")),
    TensorTemplate(LAYER + "mlp.down_proj.weight", "ffn_down", ("hidden", "ffn")),
)
_NORMS = (
    TensorTemplate(LAYER + "input_layernorm.weight", "attn_norm", ("hidden",)),
    TensorTemplate(LAYER + "post_attention_layernorm.weight", "ffn_norm", ("hidden",)),
)
_SANDWICH_NORMS = (
    TensorTemplate(LAYER + "input_layernorm.weight", "attn_norm", ("hidden",)),
    TensorTemplate(LAYER + "post_attention_layernorm.weight", "post_attention_norm", ("hidden",)),
    TensorTemplate(LAYER + "pre_feedforward_layernorm.weight", "ffn_norm", ("hidden",)),
    TensorTemplate(LAYER + "post_feedforward_layernorm.weight", "post_ffw_norm", ("hidden",)),
)
# OLMo-2: no pre-norms; each sub-layer's output is normed before the residual add, and the q/k
# norms span the whole projection (q_dim / kv_dim), not one head.
_POST_NORMS = (
    TensorTemplate(LAYER + "post_attention_layernorm.weight", "post_attention_norm", ("hidden",)),
    TensorTemplate(LAYER + "post_feedforward_layernorm.weight", "post_ffw_norm", ("hidden",)),
)
_PROJECTION_QK_NORM = (
    TensorTemplate(LAYER + "self_attn.q_norm.weight", "attn_q_norm", ("q_dim",)),
    TensorTemplate(LAYER + "self_attn.k_norm.weight", "attn_k_norm", ("kv_dim",)),
)
_GLOBAL = (
    TensorTemplate("model.embed_tokens.weight", "embed", ("vocab", "hidden")),
    TensorTemplate("model.norm.weight", "output_norm", ("hidden",)),
    TensorTemplate("lm_head.weight", "lm_head", ("vocab", "hidden")),
)

_LLAMA_GGUF = GgufConventions(arch="llama", permute_qk=True, sliding_window="cap_context",
                              rope_scaling=("default", "linear", "yarn", "llama3"))
LLAMA = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    model_types=("llama", "mistral"),
    tensors=(*_GLOBAL, *_ATTENTION, *_MLP, *_NORMS, *optional(*_ATTENTION_BIAS)),
    gguf=_LLAMA_GGUF,
)
QWEN2 = replace(
    LLAMA, name="qwen2", architectures=("Qwen2ForCausalLM",), model_types=("qwen2",),
    tensors=(*_GLOBAL, *_ATTENTION, *_ATTENTION_BIAS, *_MLP, *_NORMS),
    sliding_window="layer_types",
    gguf=GgufConventions(arch="qwen2"),
)
QWEN3 = replace(
    QWEN2, name="qwen3", architectures=("Qwen3ForCausalLM",), model_types=("qwen3",),
    tensors=(*_GLOBAL, *_ATTENTION, *_QK_NORM, *_MLP, *_NORMS, *optional(*_ATTENTION_BIAS)),
    gguf=GgufConventions(arch="qwen3"),
)

_GEMMA_GGUF = GgufConventions(arch="gemma", activations=("gelu_pytorch_tanh", "gelu"), lm_head="absent",
                              rope_scaling=("default",))
_GEMMA2_GGUF = replace(
    _GEMMA_GGUF, arch="gemma2", activation_key="hidden_activation", activations=("gelu_pytorch_tanh",),
    sliding_window="per_layer",
    softcapping=(("attn_logit_softcapping", "{arch}.attn_logit_softcapping"),
                 ("final_logit_softcapping", "{arch}.final_logit_softcapping")),
    softcapping_always=True, unsupported_keys=(), per_head_scale_layers=(46,),
)
_GEMMA3_GGUF = replace(
    _GEMMA2_GGUF, arch="gemma3", lm_head="output", rope_scaling=("default", "linear"),
    softcapping=(("final_logit_softcapping", "{arch}.final_logit_softcapping"),),
    softcapping_always=False, unsupported_keys=("attn_logit_softcapping",), per_head_scale_layers=(62,),
    rope_base_swa=True,
)

GEMMA = replace(
    LLAMA, name="gemma", architectures=("GemmaForCausalLM",), model_types=("gemma",),
    tensors=(*_GLOBAL, *_ATTENTION, *_MLP, *_NORMS),
    tied_embeddings=True, norm_offset=1.0, embed_scale_sqrt_hidden=True,
    gguf=_GEMMA_GGUF,
)
GEMMA2 = replace(
    GEMMA, name="gemma2", architectures=("Gemma2ForCausalLM",), model_types=("gemma2",),
    tensors=(*_GLOBAL, *_ATTENTION, *_MLP, *_SANDWICH_NORMS),
    softcapping=SOFTCAPPING_KEYS, sliding_window="layer_types", sliding_window_pattern=2,
    attention_scale=AttentionScale("query_pre_attn_scalar", 256),
    gguf=_GEMMA2_GGUF,
)
GEMMA3 = replace(
    GEMMA2, name="gemma3", architectures=("Gemma3ForCausalLM",), model_types=("gemma3_text",),
    tensors=(*_GLOBAL, *_ATTENTION, *_QK_NORM, *_MLP, *_SANDWICH_NORMS),
    sliding_window_pattern=6, rope_per_layer_type=True,
    gguf=_GEMMA3_GGUF,
)

# Gemma 3 4B/12B/27B (Gemma3ForConditionalGeneration): the Gemma 3 text model under `language_model.`
# (the layout transformers 5 saves and the hub releases use), its config in `text_config` (which the
# releases write sparsely: Gemma3TextConfig's defaults fill it), and a SigLIP vision tower and projector
# kept as they are. llama.cpp's converter writes the same text model (arch gemma3) and the vision side
# to a separate mmproj file, which compact-convert does not write.
GEMMA3_VISION = replace(
    GEMMA3, name="gemma3_vision", architectures=("Gemma3ForConditionalGeneration",), model_types=("gemma3",),
    text_config="text_config", text_prefix="language_model.",
    text_defaults=(("vocab_size", 262208), ("num_attention_heads", 8), ("num_key_value_heads", 4),
                   ("head_dim", 256), ("rms_norm_eps", 1e-6), ("query_pre_attn_scalar", 256),
                   ("max_position_embeddings", 131072), ("rope_theta", 1_000_000.0),
                   ("rope_local_base_freq", 10_000.0), ("sliding_window", 4096),
                   ("hidden_activation", "gelu_pytorch_tanh"), ("final_logit_softcapping", None),
                   ("attn_logit_softcapping", None)),
    passthrough=("vision_tower.", "multi_modal_projector."),
    genai_model_type="gemma3_text",  # ONNX holds the text model only: onnxruntime-genai's text-only decoder type
)

_OLMO2_GGUF = GgufConventions(arch="olmo2", lm_head="required", vocab_size_key=False, rope_dimension_key=False,
                              q_dim_is_hidden=True)
OLMO2 = replace(
    QWEN2, name="olmo2", architectures=("Olmo2ForCausalLM",), model_types=("olmo2",),
    tensors=(*_GLOBAL, *_ATTENTION, *_PROJECTION_QK_NORM, *_MLP, *_POST_NORMS),
    genai_model_type="olmo",
    gguf=_OLMO2_GGUF,
)

# Granite 3: Llama's tensors and rope layout with four multipliers: the embedding output, each
# sub-layer's output before its residual add, the attention scores (instead of 1/sqrt(head_dim))
# and the logits (divided). transformers applies the middle two inside the decoder layer.
GRANITE = replace(
    LLAMA, name="granite", architectures=("GraniteForCausalLM",), model_types=("granite",),
    tensors=(*_GLOBAL, *_ATTENTION, *_MLP, *_NORMS),
    embedding_multiplier="embedding_multiplier", logits_divisor="logits_scaling",
    gguf=GgufConventions(arch="granite", permute_qk=True, rope_scaling=("default", "linear", "yarn", "llama3"),
                         head_dim_keys=False, scales=GRANITE_SCALES),
)

# SmolLM3: Llama without RoPE on every fourth layer (by default), tied embeddings.
SMOLLM3 = replace(
    LLAMA, name="smollm3", architectures=("SmolLM3ForCausalLM",), model_types=("smollm3",),
    tied_embeddings=True, sliding_window="layer_types", no_rope_interval=4,
    gguf=GgufConventions(arch="smollm3", permute_qk=True, no_rope_step=4),
)

# Phi-3 / Phi-3.5 / Phi-4-mini: q, k and v rows fused in one qkv_proj, gate and up rows in one
# gate_up_proj ("2*ffn": both halves cut with the same kept channels), partial rotary and LongRoPE.
# llama.cpp keeps both fused (attn_qkv; ffn_up holding gate then up) and rotates neox-style.
PHI3 = replace(
    LLAMA, name="phi3", architectures=("Phi3ForCausalLM",), model_types=("phi3",),
    tensors=(
        *_GLOBAL,
        TensorTemplate(LAYER + "self_attn.qkv_proj.weight", "attn_qkv", ("q_dim+2*kv_dim", "hidden")),
        TensorTemplate(LAYER + "self_attn.o_proj.weight", "attn_output", ("hidden", "q_dim")),
        TensorTemplate(LAYER + "mlp.gate_up_proj.weight", "ffn_gate_up", ("2*ffn", "hidden")),
        TensorTemplate(LAYER + "mlp.down_proj.weight", "ffn_down", ("hidden", "ffn")),
        *_NORMS,
    ),
    gguf=GgufConventions(arch="phi3", sliding_window="cap_context", rope_scaling=("default", "longrope"),
                         partial_rotary=True, phi3_keys=True, vocab_size_key=False,
                         head_dim_keys=False),
)

# Mixture of experts: each layer's MLP is a router (not cut) and `experts` FFNs of width `moe_ffn`, each cut
# with its own kept channels. transformers 5 holds the experts stacked (gate and up rows of every expert in
# one [experts, 2*moe_ffn, hidden] tensor, down_proj in [experts, hidden, moe_ffn]) and saves them as
# the released checkpoints do, one 2-D tensor per expert; either layout is read and kept as it is.
EXPERTS = LAYER + "mlp.experts.{expert}."
_MOE_STACKED = (
    TensorTemplate(LAYER + "mlp.experts.gate_up_proj", "ffn_gate_up_exps", ("experts", "2*moe_ffn", "hidden"),
                   layout="stacked"),
    TensorTemplate(LAYER + "mlp.experts.down_proj", "ffn_down_exps", ("experts", "hidden", "moe_ffn"),
                   layout="stacked"),
)
_MOE_PER_EXPERT = (
    TensorTemplate(EXPERTS + "gate_proj.weight", "ffn_gate_exp", ("moe_ffn", "hidden"), layout="per-expert"),
    TensorTemplate(EXPERTS + "up_proj.weight", "ffn_up_exp", ("moe_ffn", "hidden"), layout="per-expert"),
    TensorTemplate(EXPERTS + "down_proj.weight", "ffn_down_exp", ("hidden", "moe_ffn"), layout="per-expert"),
)
_ROUTER = TensorTemplate(LAYER + "mlp.gate.weight", "ffn_gate_inp", ("experts", "hidden"))
_MOE = (_ROUTER, *_MOE_STACKED, *_MOE_PER_EXPERT)
_EXPERT_COUNT = ("num_experts", "num_local_experts")

# Qwen3-MoE: Qwen3's attention, every layer sparse (configs with dense `mlp_only_layers` are refused).
QWEN3_MOE = replace(
    QWEN3, name="qwen3_moe", architectures=("Qwen3MoeForCausalLM",), model_types=("qwen3_moe",),
    tensors=(*_GLOBAL, *_ATTENTION, *_QK_NORM, *_MOE, *_NORMS, *optional(*_ATTENTION_BIAS)),
    ffn_key=None, moe_ffn_key="moe_intermediate_size",
    experts_keys=_EXPERT_COUNT, genai_model_type="qwen3",  # ONNX: exporters.onnx.experts
    # llama.cpp's qwen3moe graph always renormalises the top-k router weights (config norm_topk_prob true).
    gguf=GgufConventions(arch="qwen3moe", expert_weights_norm=True,
                         ffn_lengths=((FEED_FORWARD_LENGTH, "=intermediate_size"),
                                      (EXPERT_FEED_FORWARD_LENGTH, "moe_ffn"))),
)
# Qwen2-MoE: beside the routed experts, a shared expert (the `ffn` dimension, cut by kept_ffn_channels) whose
# output a sigmoid of its own one-row gate scales.
QWEN2_MOE = replace(
    QWEN2, name="qwen2_moe", architectures=("Qwen2MoeForCausalLM",), model_types=("qwen2_moe",),
    tensors=(*_GLOBAL, *_ATTENTION, *optional(*_ATTENTION_BIAS), *_MOE, *_NORMS,  # config `qkv_bias` may drop them
             TensorTemplate(LAYER + "mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp", ("ffn", "hidden")),
             TensorTemplate(LAYER + "mlp.shared_expert.up_proj.weight", "ffn_up_shexp", ("ffn", "hidden")),
             TensorTemplate(LAYER + "mlp.shared_expert.down_proj.weight", "ffn_down_shexp", ("hidden", "ffn")),
             TensorTemplate(LAYER + "mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp", ("1", "hidden"))),
    ffn_key="shared_expert_intermediate_size", moe_ffn_key="moe_intermediate_size",
    experts_keys=_EXPERT_COUNT, genai_model_type="qwen2",  # ONNX: exporters.onnx.experts
    # llama.cpp's qwen2moe graph never renormalises the top-k router weights and always loads `output`.
    gguf=GgufConventions(arch="qwen2moe", lm_head="required",
                         ffn_lengths=((FEED_FORWARD_LENGTH, "=intermediate_size"),
                                      (EXPERT_FEED_FORWARD_LENGTH, "moe_ffn"),
                                      (EXPERT_SHARED_FEED_FORWARD_LENGTH, "ffn"))),
)
# Mixtral: Mistral's attention; the experts' width is `intermediate_size`. Released checkpoints name the
# block `block_sparse_moe` with w1 (gate), w3 (up) and w2 (down) per expert; transformers 5 renames it `mlp`.
_MIXTRAL_PER_EXPERT = (
    replace(_ROUTER, name=LAYER + "block_sparse_moe.gate.weight", layout="per-expert"),
    *(replace(t, name=LAYER + "block_sparse_moe.experts.{expert}." + w)
      for t, w in zip(_MOE_PER_EXPERT, ("w1.weight", "w3.weight", "w2.weight"))),  # gate, up, down
)
MIXTRAL = replace(
    LLAMA, name="mixtral", architectures=("MixtralForCausalLM",), model_types=("mixtral",),
    tensors=(*_GLOBAL, *_ATTENTION, *_NORMS, *optional(*_ATTENTION_BIAS),
             replace(_ROUTER, layout="stacked"), *_MOE_STACKED, *_MIXTRAL_PER_EXPERT),
    ffn_key=None, moe_ffn_key="intermediate_size",
    experts_keys=_EXPERT_COUNT, genai_model_type="mistral",  # ONNX: exporters.onnx.experts
    # llama.cpp writes Mixtral as a llama with experts, sized by feed_forward_length, always renormalised.
    gguf=replace(_LLAMA_GGUF, ffn_lengths=((FEED_FORWARD_LENGTH, "moe_ffn"),), expert_weights_norm=True,
                 norm_topk_key=None),
)
# OLMoE: pre-norm layers, q/k norms over the whole projection (as OLMo-2's), experts of width `intermediate_size`.
OLMOE = replace(
    LLAMA, name="olmoe", architectures=("OlmoeForCausalLM",), model_types=("olmoe",),
    tensors=(*_GLOBAL, *_ATTENTION, *_PROJECTION_QK_NORM, *_MOE, *_NORMS, *optional(*_ATTENTION_BIAS)),
    ffn_key=None, moe_ffn_key="intermediate_size",
    experts_keys=_EXPERT_COUNT, genai_model_type="olmo",  # ONNX: exporters.onnx.experts
    # llama.cpp's olmoe graph: OLMo-2's head and q/k shapes (its k norm hidden wide), experts sized by
    # feed_forward_length, never renormalised, and no clip_qkv.
    gguf=replace(_OLMO2_GGUF, arch="olmoe", k_norm_is_hidden=True, ffn_lengths=((FEED_FORWARD_LENGTH, "moe_ffn"),),
                 unsupported_keys=(*SOFTCAPPING_KEYS, "clip_qkv")),
)

# Every family, by name, in the order error messages list them.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    LLAMA, GEMMA, QWEN2, QWEN3, GEMMA2, GEMMA3, GEMMA3_VISION, OLMO2, GRANITE, SMOLLM3, PHI3,
    QWEN3_MOE, QWEN2_MOE, MIXTRAL, OLMOE)}


def gguf_conventions_of(arch: str) -> GgufConventions | None:
    """The conventions of the family whose GGUF `general.architecture` is `arch`, if any."""
    return next((f.gguf for f in FAMILIES.values() if f.gguf is not None and f.gguf.arch == arch), None)
