"""What the hand-written ONNX graph needs to know about one pruned model, decided before writing.

The fused graph (exporters.onnx.fused) covers the decoder shape shared by Llama, Qwen2, Qwen3 and
Gemma 1-3: RMSNorm (Gemma's 1 + w folded into the stored weight), a gated MLP without biases
(SiLU, or Gemma's tanh GELU), grouped-query attention with optional q/k/v biases (Qwen2) or
per-head q/k RMSNorm (Qwen3, Gemma 3), and Gemma's extras as data: the embedding scale, the
sandwich norms around attention and MLP (Gemma 2/3), the attention scale and soft-cap, the
final logit soft-cap, a sliding window per layer and a rotary table per layer type (Gemma 3's
local and global bases). `recipe_for` returns None for anything else, and the exporter falls back
to the traced graph, so a family is moved onto the fused path by widening this check and the
graph, nothing more. The recipe also fixes the weight precision: float initializers (fp32/fp16)
or onnxruntime's `MatMulNBits` (4 or 8 bits; blocks symmetric with least-squares scales or, for
4 bits asked for, asymmetric with zero points; `accuracy_level` 4 by default lets the CPU kernel
use int8 activations, the setting onnxruntime-genai's builder picks for CPU), and the LM head's
own precision, which under int4 may be 8-bit blocks or a float MatMul (fp16 or fp32 weights)
instead; a tied embedding reads the head's storage either way.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from converter.arch.rotary_layers import rotary_layers
from converter.arch.sliding_layers import sliding_layers
from converter.arch.families import Family
from converter.arch.spec import ModelDims
from converter.prune import PrunedCheckpoint

FUSED_FAMILIES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
DEFAULT_ROPE = "default"
DEFAULT_ACCURACY_LEVEL = 4
DEFAULT_CONTEXT = 4096
# Biases the fused graph has no place for (Llama's attention_bias also biases o_proj; mlp_bias).
UNSUPPORTED_BIASES = (".self_attn.o_proj.bias", ".mlp.gate_proj.bias", ".mlp.up_proj.bias", ".mlp.down_proj.bias")


@dataclass(frozen=True)
class Precision:
    """How weights are stored and which float type the activations, cache and I/O use."""

    outtype: str
    bits: int | None
    block_size: int
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    symmetric: bool = True
    fp16_activations: bool = False  # quantized weights computing in fp16 (GPU providers, as the builder does)

    @property
    def float_type(self) -> int:
        """Float weights' type, or for quantized ones their scales' and the activations' type."""
        fp16 = self.outtype == "fp16" or (self.bits is not None and self.fp16_activations)
        return TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT

    @property
    def quantized(self) -> bool:
        return self.bits is not None


@dataclass(frozen=True)
class FusedRecipe:
    """The pruned model's dimensions and the variant of the decoder layer it needs."""

    model_type: str
    dims: ModelDims
    eps: float
    qkv_bias: bool
    qk_norm: bool
    tied: bool
    context: int
    precision: Precision
    head: Precision  # the LM head's (and a tied embedding's) storage; `precision` unless --int4-lm-head says otherwise
    activation: str = "silu"  # or "gelu_tanh" (Gemma)
    norm_offset: float = 0.0  # stored norm weights are offset + w (Gemma's 1 + w)
    embed_scale: float | None = None  # the embedding output times this (Gemma: sqrt(hidden))
    sandwich_norms: bool = False  # Gemma 2/3: attention and MLP outputs are normed before the residual add
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float = 0.0  # GroupQueryAttention's softcap; 0 is none
    final_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    windows: tuple[int, ...] = ()  # per layer: the sliding window in tokens, 0 for full attention; () all full
    ropes: tuple[str, ...] = ()  # per layer: the rotary table's layer type; () all DEFAULT_ROPE
    last_logits: bool = False  # logits [batch, 1, vocab] of the last position only (--onnx-logits last)

    def window(self, layer: int) -> int:
        return self.windows[layer] if self.windows else 0

    def rope(self, layer: int) -> str:
        return self.ropes[layer] if self.ropes else DEFAULT_ROPE

    @property
    def rope_tables(self) -> list[str]:
        return sorted(set(self.ropes)) if self.ropes else [DEFAULT_ROPE]

    @property
    def q_dim(self) -> int:
        return self.dims.heads * self.dims.head_dim

    @property
    def kv_dim(self) -> int:
        return self.dims.kv_heads * self.dims.head_dim


def _layer_windows(config: dict, family: Family, sliding: list[bool]) -> tuple[int, ...] | None:
    """Per layer, the sliding window (0: full attention); None when a window applies that the recipe
    cannot place (Mistral's config-wide window reaches every layer the same way, but is left to the traced graph)."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:
        return ()
    if family.sliding_window == "config":
        return None if window is not None else ()
    if window is None or not any(sliding):
        return ()
    return tuple(int(window) if s else 0 for s in sliding)


def _precisions(outtype: str, block_size: int, accuracy_level: int, symmetric: bool,
                lm_head: str | None, ep: str) -> tuple[Precision, Precision]:
    """(weights, LM head); symmetric applies to 4-bit blocks, an int8 head is symmetric like --outtype int8.
    On a GPU provider quantized weights compute in fp16, as the builder's int4 graphs for cuda/dml/webgpu do."""
    bits = {"int4": 4, "int8": 8}.get(outtype)
    fp16 = ep != "cpu"
    weights = Precision(outtype, bits, block_size, accuracy_level, symmetric or bits != 4, fp16)
    if lm_head is None or lm_head == outtype:
        return weights, weights
    head_bits = {"int4": 4, "int8": 8}.get(lm_head)
    return weights, Precision(lm_head, head_bits, block_size, accuracy_level, symmetric or head_bits != 4, fp16)


def recipe_for(pruned: PrunedCheckpoint, outtype: str, block_size: int, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
               symmetric: bool = True, lm_head: str | None = None, ep: str = "cpu",
               last_logits: bool = False) -> FusedRecipe | None:
    """The fused graph's recipe, or None when the model needs the traced graph instead. `lm_head`, the
    head's type (int4/int8/fp16/fp32), is for int4 weights only; the exporter's check refuses it otherwise.
    `last_logits`: the graph returns the last position's logits only (--onnx-logits last)."""
    spec = pruned.spec
    config = dict(spec.config)
    family = spec.family_record
    if spec.family not in FUSED_FAMILIES:
        return None
    activation = ACTIVATIONS.get(config.get("hidden_activation") or config.get("hidden_act") or "silu")
    where = pruned.source.folder / "config.json"
    sliding = sliding_layers(config, family, spec.dims.layers, where)
    windows = _layer_windows(config, family, sliding)
    if activation is None or windows is None:
        return None
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    # GroupQueryAttention here rotates every layer; no-RoPE layers (SmolLM3) need the traced graph.
    if not all(rotary_layers(config, family, spec.dims.layers, where)):
        return None
    names = {p.name for p in pruned.planned()}
    if any(name.endswith(UNSUPPORTED_BIASES) for name in names):
        return None
    weights, head = _precisions(outtype, block_size, accuracy_level, symmetric, lm_head, ep)
    scale = family.attention_scale
    return FusedRecipe(
        model_type=spec.model_type,
        dims=pruned.dims,
        eps=float(config.get("rms_norm_eps", 1e-6)),
        qkv_bias="model.layers.0.self_attn.q_proj.bias" in names,
        qk_norm="model.layers.0.self_attn.q_norm.weight" in names,
        tied=spec.tied_embeddings,
        context=int(config.get("max_position_embeddings") or DEFAULT_CONTEXT),
        precision=weights,
        head=head,
        activation=activation,
        norm_offset=family.norm_offset,
        embed_scale=float(spec.dims.hidden) ** 0.5 if family.embed_scale_sqrt_hidden else None,
        sandwich_norms="model.layers.0.pre_feedforward_layernorm.weight" in names,
        attn_scale=float(config.get(scale.key) or scale.default) ** -0.5 if scale is not None else None,
        attn_softcap=float(config.get("attn_logit_softcapping") or 0.0)
        if "attn_logit_softcapping" in family.softcapping else 0.0,
        final_softcap=float(config["final_logit_softcapping"])
        if "final_logit_softcapping" in family.softcapping and config.get("final_logit_softcapping") else None,
        windows=windows,
        ropes=tuple("sliding_attention" if s else "full_attention" for s in sliding)
        if family.rope_per_layer_type else (),
        last_logits=last_logits,
    )
