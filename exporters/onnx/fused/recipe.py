"""What the hand-written ONNX graph needs to know about one pruned model, decided before writing.

The fused graph (exporters.onnx.fused) covers the decoder shape shared by Llama, Qwen2 and Qwen3:
RMSNorm, SiLU-gated MLP without biases, grouped-query attention with optional q/k/v biases
(Qwen2) or per-head q/k RMSNorm (Qwen3), full causal attention (no sliding window). `recipe_for`
returns None for anything else, and the exporter falls back to the traced graph, so a family is
moved onto the fused path by widening this check and the graph, nothing more. The recipe also
fixes the weight precision: float initializers (fp32/fp16) or onnxruntime's `MatMulNBits`
(4 or 8 bits; 4-bit blocks symmetric or, asked for, asymmetric with zero points; `accuracy_level`
4 by default lets the CPU kernel use int8 activations, the setting onnxruntime-genai's builder
picks for CPU), and the LM head's own precision, which under int4 may be 8-bit blocks or a float
MatMul (fp16 or fp32 weights) instead; a tied embedding reads the head's storage either way.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from converter.arch.rotary_layers import rotary_layers
from converter.arch.spec import ModelDims
from converter.prune import PrunedCheckpoint

FUSED_FAMILIES = ("llama", "qwen2", "qwen3")
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

    @property
    def float_type(self) -> int:
        return TensorProto.FLOAT16 if self.outtype == "fp16" else TensorProto.FLOAT

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

    @property
    def q_dim(self) -> int:
        return self.dims.heads * self.dims.head_dim

    @property
    def kv_dim(self) -> int:
        return self.dims.kv_heads * self.dims.head_dim


def _sliding(config: dict) -> bool:
    if config.get("use_sliding_window") is False:
        return False
    if any(t == "sliding_attention" for t in config.get("layer_types") or ()):
        return True
    return config.get("sliding_window") is not None and config.get("use_sliding_window", True) is not False


def _precisions(outtype: str, block_size: int, accuracy_level: int, symmetric: bool,
                lm_head: str | None) -> tuple[Precision, Precision]:
    """(weights, LM head); symmetric applies to 4-bit blocks, an int8 head is symmetric like --outtype int8."""
    bits = {"int4": 4, "int8": 8}.get(outtype)
    weights = Precision(outtype, bits, block_size, accuracy_level, symmetric or bits != 4)
    if lm_head is None or lm_head == outtype:
        return weights, weights
    head_bits = {"int4": 4, "int8": 8}.get(lm_head)
    return weights, Precision(lm_head, head_bits, block_size, accuracy_level, symmetric or head_bits != 4)


def recipe_for(pruned: PrunedCheckpoint, outtype: str, block_size: int, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
               symmetric: bool = True, lm_head: str | None = None) -> FusedRecipe | None:
    """The fused graph's recipe, or None when the model needs the traced graph instead. `lm_head`, the
    head's type (int4/int8/fp16/fp32), is for int4 weights only; the exporter's check refuses it otherwise."""
    spec = pruned.spec
    config = dict(spec.config)
    if spec.family not in FUSED_FAMILIES:
        return None
    if config.get("hidden_act", "silu") != "silu" or _sliding(config):
        return None
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    # GroupQueryAttention here rotates every layer; no-RoPE layers (SmolLM3) need the traced graph.
    if not all(rotary_layers(config, spec.family_record, spec.dims.layers, pruned.source.folder / "config.json")):
        return None
    names = {p.name for p in pruned.planned()}
    if any(name.endswith(UNSUPPORTED_BIASES) for name in names):
        return None
    weights, head = _precisions(outtype, block_size, accuracy_level, symmetric, lm_head)
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
    )
