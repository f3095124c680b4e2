"""The decoder graph written node by node with onnx.helper, in onnxruntime's fused contrib ops.

Per layer: `SkipSimplifiedLayerNormalization` adds the residual and applies RMSNorm in one op (the
first layer's norm has no residual yet: `SimplifiedLayerNormalization`; Gemma 2/3 norm the
attention and MLP outputs with it too before they are added); one packed QKV MatMul
(plus its bias for Qwen2; for Qwen3 a split and per-head RMSNorm of q and k); then
`GroupQueryAttention` with the rotary embedding fused in (`do_rotary`, cos/sin caches), which
also appends the new keys/values to the cache (in place when onnxruntime-genai shares the past
and present buffers). Positions come from the attention mask inside GQA (`seqlens_k` = tokens
so far - 1, `total_sequence_length`), so the graph has no position_ids input, and, like
onnxruntime-genai's own builder graphs, it reads a batch as right-padded. Matrices are MatMul on
[K, N] float initializers or `MatMulNBits` (with zero points when asymmetric; the LM head may
differ in type, --int4-lm-head); the MLP's gate and up rows are one packed MatMul
(split after it), one activation quantization and one kernel call fewer per layer than the
builder's graph. I/O follow the builder's CPU graphs: input_ids,
attention_mask, past_key_values.{i}.key/value in; logits, present.{i}.key/value out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporters.onnx.fused import names
from exporters.onnx.fused.recipe import FusedRecipe, Precision

OPSET = 21
MS_DOMAIN = "com.microsoft"


@dataclass
class Nodes:
    """The node list under construction, with small int64 constants made once."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    constants: dict[str, TensorProto] = field(default_factory=dict)

    def add(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "",
            **attrs: Any) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def scalar(self, value: float, data_type: int) -> str:
        """A float scalar of the activations' type (the embedding scale, soft-cap divisors)."""
        np_type = np.float16 if data_type == TensorProto.FLOAT16 else np.float32
        name = f"const.{np.dtype(np_type).name}.{value!r}"
        if name not in self.constants:
            self.constants[name] = onnx.numpy_helper.from_array(np.array(value, dtype=np_type), name)
        return name

    def int64(self, values: list[int], scalar: bool = False) -> str:
        name = f"const.int64.{'scalar.' if scalar else ''}{'_'.join(map(str, values))}"
        if name not in self.constants:
            array = np.array(values[0] if scalar else values, dtype=np.int64)
            self.constants[name] = onnx.numpy_helper.from_array(array, name)
        return name


@dataclass(frozen=True)
class Wiring:
    """Graph-wide values every layer reads."""

    seqlens_k: str
    total_length: str
    last_int64: str  # seqlens_k before its cast: per row, the index of its last real token in the whole sequence
    total_int64: str  # total_length before its cast


def _linear(g: Nodes, recipe: FusedRecipe, x: str, base: str, k: int, n: int, prefix: str,
            precision: Precision | None = None) -> str:
    """x @ W for `base`'s weight stored as `precision` (default: the recipe's); a float weight of another
    type than the activations (an fp16 LM head under int4) gets its input and output cast."""
    p = precision or recipe.precision
    out = f"{prefix}/MatMul"
    if p.bits is None:
        activations = recipe.precision.float_type
        if p.float_type == activations:
            return g.add("MatMul", [x, names.weight(base, None)], [out], out)[0]
        cast = g.add("Cast", [x], [f"{prefix}/cast_in"], f"{prefix}/CastIn", to=p.float_type)[0]
        g.add("MatMul", [cast, names.weight(base, None)], [f"{out}/raw"], out)
        return g.add("Cast", [f"{out}/raw"], [out], f"{prefix}/CastOut", to=activations)[0]
    inputs = [x, names.weight(base, p.bits), names.scales(base)]
    if not p.symmetric:
        inputs.append(names.zero_points(base))
    g.add("MatMulNBits", inputs, [out], out, MS_DOMAIN, K=k, N=n, bits=p.bits, block_size=p.block_size,
          accuracy_level=p.accuracy_level)
    return out


def _mask_inputs(g: Nodes) -> Wiring:
    """GQA's seqlens_k (int32 [batch], tokens so far - 1) and total_sequence_length (int32 scalar)."""
    p = "mask"
    g.add("ReduceSum", ["attention_mask", g.int64([1])], [f"{p}/sum"], f"{p}/ReduceSum", keepdims=0)
    g.add("Sub", [f"{p}/sum", g.int64([1], scalar=True)], [f"{p}/last"], f"{p}/Sub")
    g.add("Cast", [f"{p}/last"], ["seqlens_k"], f"{p}/Cast", to=TensorProto.INT32)
    g.add("Shape", ["attention_mask"], [f"{p}/shape"], f"{p}/Shape")
    g.add("Gather", [f"{p}/shape", g.int64([1], scalar=True)], [f"{p}/total"], f"{p}/Gather", axis=0)
    g.add("Cast", [f"{p}/total"], ["total_sequence_length"], f"{p}/CastTotal", to=TensorProto.INT32)
    return Wiring("seqlens_k", "total_sequence_length", f"{p}/last", f"{p}/total")


def _embedding(g: Nodes, recipe: FusedRecipe) -> str:
    """The token embeddings [batch, seq, hidden], times the embedding scale (Gemma) when there is one."""
    looked_up = _lookup(g, recipe)
    if recipe.embed_scale is None:
        return looked_up
    scale = g.scalar(recipe.embed_scale, recipe.precision.float_type)
    return g.add("Mul", [looked_up, scale], ["embed/scaled"], "embed/Scale")[0]


def _lookup(g: Nodes, recipe: FusedRecipe) -> str:
    """The embedding rows of input_ids; a tied model reads them from the lm_head's storage."""
    precision = recipe.head if recipe.tied else recipe.precision
    bits, hidden, vocab = precision.bits, recipe.dims.hidden, recipe.dims.vocab
    base = names.LM_HEAD if recipe.tied else names.EMBED
    out = "embed/output"
    if bits is None:
        if not recipe.tied:
            return g.add("Gather", [names.weight(base, None), "input_ids"], [out], "embed/Gather")[0]
        g.add("Gather", [names.weight(base, None), "input_ids"], ["embed/columns"], "embed/Gather", axis=1)
        if precision.float_type == recipe.precision.float_type:
            return g.add("Transpose", ["embed/columns"], [out], "embed/Transpose", perm=[1, 2, 0])[0]
        g.add("Transpose", ["embed/columns"], ["embed/rows"], "embed/Transpose", perm=[1, 2, 0])
        return g.add("Cast", ["embed/rows"], [out], "embed/Cast", to=recipe.precision.float_type)[0]
    block = precision.block_size
    padded = -(-hidden // block) * block
    table = names.weight(base, bits)
    if recipe.tied:
        table = g.add("Reshape", [table, g.int64([vocab, padded * bits // 8])], ["embed/rows"], "embed/Reshape")[0]
    looked_up = out if padded == hidden else "embed/padded"
    inputs = [table, "input_ids", names.scales(base)] + ([] if precision.symmetric else [names.zero_points(base)])
    g.add("GatherBlockQuantized", inputs, [looked_up], "embed/Lookup", MS_DOMAIN,
          bits=bits, block_size=block, gather_axis=0, quantize_axis=1)
    if padded != hidden:
        g.add("Slice", [looked_up, g.int64([0]), g.int64([hidden]), g.int64([2])], [out], "embed/Unpad")
    return out


def _qk_norm(g: Nodes, recipe: FusedRecipe, x: str, weight: str, width: int, prefix: str) -> str:
    """RMSNorm of every head of q or k: [b, s, heads*hd] -> [b, s*heads, hd] -> norm -> back."""
    head_dim = recipe.dims.head_dim
    g.add("Reshape", [x, g.int64([0, -1, head_dim])], [f"{prefix}/heads"], f"{prefix}/Reshape")
    g.add("SimplifiedLayerNormalization", [f"{prefix}/heads", weight], [f"{prefix}/normed"],
          f"{prefix}/Norm", axis=-1, epsilon=recipe.eps, stash_type=1)
    return g.add("Reshape", [f"{prefix}/normed", g.int64([0, -1, width])], [f"{prefix}/out"], f"{prefix}/Back")[0]


def _attention(g: Nodes, recipe: FusedRecipe, wires: Wiring, x: str, i: int) -> str:
    d, p = recipe.dims, f"layers.{i}/attn"
    qkv_width = recipe.q_dim + 2 * recipe.kv_dim
    base = names.in_layer(i, names.QKV)
    qkv = _linear(g, recipe, x, base, d.hidden, qkv_width, f"{p}/qkv")
    if recipe.qkv_bias:
        qkv = g.add("Add", [qkv, names.bias(base)], [f"{p}/qkv/Add"], f"{p}/qkv/Add")[0]
    qkv_inputs = [qkv, "", ""]
    if recipe.qk_norm:
        parts = [f"{p}/q", f"{p}/k", f"{p}/v"]
        g.add("Split", [qkv, g.int64([recipe.q_dim, recipe.kv_dim, recipe.kv_dim])], parts, f"{p}/Split", axis=-1)
        q = _qk_norm(g, recipe, parts[0], names.in_layer(i, names.Q_NORM), recipe.q_dim, f"{p}/q_norm")
        k = _qk_norm(g, recipe, parts[1], names.in_layer(i, names.K_NORM), recipe.kv_dim, f"{p}/k_norm")
        qkv_inputs = [q, k, parts[2]]
    out = f"{p}/GroupQueryAttention"
    rope = recipe.rope(i)
    # local_window_size counts the keys in all, the query's own included, as transformers' window does.
    window = recipe.window(i) or -1
    scale = recipe.attn_scale if recipe.attn_scale is not None else float(d.head_dim) ** -0.5
    g.add("GroupQueryAttention",
          [*qkv_inputs, f"past_key_values.{i}.key", f"past_key_values.{i}.value", wires.seqlens_k,
           wires.total_length, names.rotary(names.COS, rope), names.rotary(names.SIN, rope)],
          [out, f"present.{i}.key", f"present.{i}.value"], out, MS_DOMAIN,
          num_heads=d.heads, kv_num_heads=d.kv_heads, scale=scale, do_rotary=1,
          rotary_interleaved=0, local_window_size=window, softcap=recipe.attn_softcap)
    return _linear(g, recipe, out, names.in_layer(i, names.O_PROJ), recipe.q_dim, d.hidden, f"{p}/o_proj")


def _mlp(g: Nodes, recipe: FusedRecipe, x: str, i: int) -> str:
    d, p = recipe.dims, f"layers.{i}/mlp"
    both = _linear(g, recipe, x, names.in_layer(i, names.GATE_UP), d.hidden, 2 * d.ffn, f"{p}/gate_up")
    gate, up = g.add("Split", [both, g.int64([d.ffn, d.ffn])], [f"{p}/gate", f"{p}/up"], f"{p}/Split", axis=-1)
    if recipe.activation == "gelu_tanh":  # onnxruntime's FastGelu is the tanh approximation
        act = g.add("FastGelu", [gate], [f"{p}/gelu"], f"{p}/FastGelu", MS_DOMAIN)[0]
    else:
        g.add("Sigmoid", [gate], [f"{p}/sigmoid"], f"{p}/Sigmoid")
        act = g.add("Mul", [gate, f"{p}/sigmoid"], [f"{p}/silu"], f"{p}/SiLU")[0]
    g.add("Mul", [act, up], [f"{p}/gated"], f"{p}/Gate")
    return _linear(g, recipe, f"{p}/gated", names.in_layer(i, names.DOWN), d.ffn, d.hidden, f"{p}/down")


def _skip_norm(g: Nodes, recipe: FusedRecipe, residual: str, delta: str, weight: str, prefix: str,
               keep_sum: bool = True) -> tuple[str, str]:
    """(normed, new residual) = (RMSNorm(residual + delta), residual + delta)."""
    outputs = [f"{prefix}/normed", "", "", f"{prefix}/residual"] if keep_sum else [f"{prefix}/normed"]
    g.add("SkipSimplifiedLayerNormalization", [residual, delta, weight], outputs, f"{prefix}/SkipNorm",
          MS_DOMAIN, epsilon=recipe.eps)
    return outputs[0], outputs[-1]


def _norm(g: Nodes, recipe: FusedRecipe, x: str, weight: str, prefix: str) -> str:
    """RMSNorm without a residual (the first layer's input; Gemma 2/3's sandwich norms)."""
    return g.add("SimplifiedLayerNormalization", [x, weight], [f"{prefix}/normed"], f"{prefix}/Norm", axis=-1,
                 epsilon=recipe.eps, stash_type=1)[0]


def _last_positions(g: Nodes, recipe: FusedRecipe, wires: Wiring, hidden: str) -> str:
    """[B, S, H] -> [B, 1, H]: each row's last real token of this chunk (a right-padded batch's rows end
    at their mask's count), so only those reach the LM head (--onnx-logits last)."""
    p = "last_position"
    g.add("Shape", ["input_ids"], [f"{p}/shape"], f"{p}/Shape")
    g.add("Gather", [f"{p}/shape", g.int64([1], scalar=True)], [f"{p}/chunk"], f"{p}/Chunk", axis=0)
    g.add("Sub", [wires.total_int64, f"{p}/chunk"], [f"{p}/past"], f"{p}/Past")
    g.add("Sub", [wires.last_int64, f"{p}/past"], [f"{p}/index"], f"{p}/Index")  # int64 [B]
    g.add("Sub", [f"{p}/chunk", g.int64([1], scalar=True)], [f"{p}/top"], f"{p}/Top")
    g.add("Min", [f"{p}/index", f"{p}/top"], [f"{p}/below"], f"{p}/Min")
    g.add("Max", [f"{p}/below", g.int64([0], scalar=True)], [f"{p}/clamped"], f"{p}/Max")
    g.add("Reshape", [f"{p}/clamped", g.int64([-1, 1, 1])], [f"{p}/rows"], f"{p}/Reshape")
    g.add("Expand", [f"{p}/rows", g.int64([1, 1, recipe.dims.hidden])], [f"{p}/picks"], f"{p}/Expand")
    return g.add("GatherElements", [hidden, f"{p}/picks"], [f"{p}/hidden"], f"{p}/GatherElements", axis=1)[0]


def _softcap(g: Nodes, recipe: FusedRecipe, logits: str, cap: float) -> str:
    """cap * tanh(logits / cap): Gemma 2's final logit soft-capping."""
    value = g.scalar(cap, recipe.precision.float_type)
    g.add("Div", [logits, value], ["softcap/scaled"], "softcap/Div")
    g.add("Tanh", ["softcap/scaled"], ["softcap/tanh"], "softcap/Tanh")
    return g.add("Mul", ["softcap/tanh", value], ["logits"], "softcap/Mul")[0]


def _io(recipe: FusedRecipe) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    d, float_type = recipe.dims, recipe.precision.float_type
    tokens, total = ["batch_size", "sequence_length"], ["batch_size", "total_sequence_length"]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, total)]
    positions = 1 if recipe.last_logits else "sequence_length"
    outputs = [helper.make_tensor_value_info("logits", float_type, ["batch_size", positions, d.vocab])]
    for i in range(d.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", float_type,
                                                        ["batch_size", d.kv_heads, "past_sequence_length", d.head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", float_type,
                                                         ["batch_size", d.kv_heads, "total_sequence_length",
                                                          d.head_dim]))
    return inputs, outputs


def build_graph(recipe: FusedRecipe, initializers: list[TensorProto], producer: str) -> onnx.ModelProto:
    """The whole decoder as a ModelProto; `initializers` are the (external) weights already written."""
    g = Nodes()
    wires = _mask_inputs(g)
    hidden = _embedding(g, recipe)
    normed = _norm(g, recipe, hidden, names.in_layer(0, names.INPUT_NORM), "layers.0/input_norm")
    residual, delta = hidden, ""
    for i in range(recipe.dims.layers):
        if i:
            normed, residual = _skip_norm(g, recipe, residual, delta, names.in_layer(i, names.INPUT_NORM),
                                          f"layers.{i}/input_norm")
        attn = _attention(g, recipe, wires, normed, i)
        if recipe.sandwich_norms:
            attn = _norm(g, recipe, attn, names.in_layer(i, names.ATTN_OUT_NORM), f"layers.{i}/attn_out_norm")
        normed, residual = _skip_norm(g, recipe, residual, attn, names.in_layer(i, names.POST_NORM),
                                      f"layers.{i}/post_attention_norm")
        delta = _mlp(g, recipe, normed, i)
        if recipe.sandwich_norms:
            delta = _norm(g, recipe, delta, names.in_layer(i, names.MLP_OUT_NORM), f"layers.{i}/mlp_out_norm")
    final, _ = _skip_norm(g, recipe, residual, delta, names.FINAL_NORM, "final_norm", keep_sum=False)
    if recipe.last_logits:
        final = _last_positions(g, recipe, wires, final)
    d = recipe.dims
    logits = _linear(g, recipe, final, names.LM_HEAD, d.hidden, d.vocab, "lm_head", recipe.head)
    if recipe.final_softcap is None:
        g.nodes[-1].output[0] = "logits"
    else:
        _softcap(g, recipe, logits, recipe.final_softcap)
    inputs, outputs = _io(recipe)
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs,
                              initializer=[*g.constants.values(), *initializers])
    model = helper.make_model(graph, producer_name=producer,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model
