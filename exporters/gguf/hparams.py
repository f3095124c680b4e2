"""The `{arch}.*` hyperparameter keys llama.cpp reads, computed from config.json and the pruned sizes.

Everything is checked before a file is opened: a config value the family's llama.cpp graph
cannot express (an activation it does not compute, a rope scaling it lacks, a sliding window
where it has none, Gemma's query_pre_attn_scalar where it hard-codes the scale) is a
ConvertError naming the key, never a silently different model. Keys follow llama.cpp's
converter (TextModel.set_gguf_parameters and the per-family overrides).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType, Keys, RopeScalingType

from converter.arch.families import FAMILIES
from converter.arch.gguf_names import GgufConventions
from converter.arch.rotary_layers import describe, rotary_layers
from converter.arch.sliding_layers import sliding_layers
from converter.errors import ConvertError
from converter.prune import PrunedCheckpoint
from exporters.gguf.longrope import (
    LONGROPE,
    LONGROPE_ALIASES,
    attention_factor,
    factor_tensors,
    original_context,
    rotary_dims,
)


@dataclass(frozen=True)
class Kv:
    """One GGUF metadata entry, ready for GGUFWriter.add_key_value."""

    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def u32(key: str, value: int) -> Kv:
    return Kv(key, int(value), GGUFValueType.UINT32)


def f32(key: str, value: float) -> Kv:
    return Kv(key, float(value), GGUFValueType.FLOAT32)


def string(key: str, value: str) -> Kv:
    return Kv(key, value, GGUFValueType.STRING)


def boolean(key: str, value: bool) -> Kv:
    return Kv(key, bool(value), GGUFValueType.BOOL)


def gguf_conventions(pruned: PrunedCheckpoint) -> GgufConventions:
    """llama.cpp's conventions for the checkpoint's family, or a ConvertError if llama.cpp has none."""
    llama_cpp = pruned.spec.family_record.gguf
    if llama_cpp is None:
        supported = sorted(name for name, family in FAMILIES.items() if family.gguf is not None)
        raise ConvertError(f"family {pruned.spec.family!r} has no GGUF mapping; GGUF export supports "
                           f"{', '.join(supported)}", _config_path(pruned))
    return llama_cpp


def _config_path(pruned: PrunedCheckpoint) -> Path:
    return pruned.source.folder / "config.json"


def _number(config: Mapping[str, Any], key: str, where: Path, default: float | None = None) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConvertError(f"'{key}' must be a positive number for GGUF export, got {value!r}", where)
    return float(value)


def rope_parameters(config: Mapping[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(full-attention rope, sliding-attention rope or None), from rope_parameters or the legacy keys."""
    raw = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(raw, Mapping):
        raise ConvertError(f"'rope_parameters' must be an object, got {raw!r}", where)
    full = dict(raw.get("full_attention", raw))
    sliding = raw.get("sliding_attention")
    if "rope_theta" not in full and "rope_theta" in config:
        full["rope_theta"] = config["rope_theta"]
    if sliding is None and "rope_local_base_freq" in config:
        sliding = {"rope_type": "default", "rope_theta": config["rope_local_base_freq"]}
    full.setdefault("rope_type", full.get("type", "default"))
    return full, (dict(sliding) if isinstance(sliding, Mapping) else None)


def _rope_kvs(arch: str, llama_cpp: GgufConventions, config: Mapping[str, Any], where: Path) -> list[Kv]:
    full, sliding = rope_parameters(config, where)
    kvs = [f32(Keys.Rope.FREQ_BASE.format(arch=arch), _number(full, "rope_theta", where))]
    kind = full["rope_type"]
    if kind in LONGROPE_ALIASES and LONGROPE in llama_cpp.rope_scaling:
        kind = LONGROPE
    if kind not in llama_cpp.rope_scaling:
        raise ConvertError(f"rope_type {kind!r} cannot be expressed in llama.cpp's {arch} GGUF (it handles "
                           f"{', '.join(llama_cpp.rope_scaling)})", where)
    if llama_cpp.phi3_keys:
        kvs += _phi3_kvs(arch, full, config, kind, where)
    if kind in ("linear", "yarn"):
        kvs.append(Kv(Keys.Rope.SCALING_TYPE.format(arch=arch), RopeScalingType(kind).value, GGUFValueType.STRING))
        kvs.append(f32(Keys.Rope.SCALING_FACTOR.format(arch=arch), _number(full, "factor", where)))
    if kind == "yarn":
        kvs.append(u32(Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch),
                       int(_number(full, "original_max_position_embeddings", where))))
        for source, key in (("extrapolation_factor", Keys.Rope.SCALING_YARN_EXT_FACTOR),
                            ("attention_factor", Keys.Rope.SCALING_YARN_ATTN_FACTOR),
                            ("beta_fast", Keys.Rope.SCALING_YARN_BETA_FAST),
                            ("beta_slow", Keys.Rope.SCALING_YARN_BETA_SLOW)):
            if full.get(source) is not None:
                kvs.append(f32(key.format(arch=arch), _number(full, source, where)))
    if llama_cpp.rope_base_swa and sliding is not None:
        if sliding.get("rope_type", "default") != "default":
            raise ConvertError(f"sliding-attention rope_type {sliding.get('rope_type')!r} cannot be expressed in "
                               "llama.cpp's GGUF (its sliding layers use an unscaled rope)", where)
        kvs.append(f32(Keys.Rope.FREQ_BASE_SWA.format(arch=arch), _number(sliding, "rope_theta", where)))
    elif sliding is not None and sliding != full:
        raise ConvertError(f"a separate sliding-attention rope cannot be expressed in llama.cpp's {arch} GGUF",
                           where)
    return kvs


def _phi3_kvs(arch: str, full: Mapping[str, Any], config: Mapping[str, Any], kind: str, where: Path) -> list[Kv]:
    """What llama.cpp's phi3 converter always writes (the window its graph ignores, 0 when unset; the
    original context) and, for LongRoPE, the attention factor (the factor lists are tensors)."""
    window = config.get("sliding_window")
    kvs = [u32(Keys.Attention.SLIDING_WINDOW.format(arch=arch), 0 if window is None else
               int(_number(config, "sliding_window", where))),
           u32(Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch), original_context(full, config, where))]
    if kind == LONGROPE:
        kvs.append(f32(Keys.Rope.SCALING_ATTN_FACTOR.format(arch=arch), attention_factor(full, config, where)))
    return kvs


def _rotated(llama_cpp: GgufConventions, config: Mapping[str, Any], head_dim: int, where: Path) -> int:
    """`rope.dimension_count`: the whole head, or its partial rotary share where llama.cpp's graph has one."""
    return rotary_dims(rope_parameters(config, where)[0], config, head_dim, where) if llama_cpp.partial_rotary \
        else head_dim


def rope_factors(llama_cpp: GgufConventions, config: Mapping[str, Any], head_dim: int,
                 where: Path) -> dict[str, np.ndarray]:
    """LongRoPE's short and long factor tensors by llama.cpp name, for a family whose graph reads them."""
    full, _ = rope_parameters(config, where)
    if not llama_cpp.phi3_keys or full["rope_type"] not in (LONGROPE, *LONGROPE_ALIASES):
        return {}
    return factor_tensors(full, _rotated(llama_cpp, config, head_dim, where), where)


def rope_freqs(config: Mapping[str, Any], head_dim: int, where: Path) -> np.ndarray | None:
    """The `rope_freqs` factors llama.cpp's llama graph divides frequencies by, for rope_type llama3."""
    full, _ = rope_parameters(config, where)
    if full["rope_type"] != "llama3":
        return None
    base = _number(full, "rope_theta", where)
    factor = _number(full, "factor", where)
    low, high = _number(full, "low_freq_factor", where), _number(full, "high_freq_factor", where)
    old_context = _number(full, "original_max_position_embeddings", where)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_context / high, 1.0,
                       np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _window_kvs(arch: str, llama_cpp: GgufConventions, pruned: PrunedCheckpoint, where: Path) -> tuple[list[Kv], int]:
    """Sliding-window keys and the context length to declare."""
    config = pruned.spec.config
    context = int(_number(config, "max_position_embeddings", where))
    window = config.get("sliding_window")
    mode = llama_cpp.sliding_window
    if mode == "none":
        sliding = config.get("use_sliding_window") is True or "sliding_attention" in (config.get("layer_types") or [])
        if sliding:
            raise ConvertError(f"a sliding attention window cannot be expressed in llama.cpp's {arch} GGUF", where)
        return [], context
    if mode == "cap_context":
        if window is None:
            return [], context
        return [], min(context, int(_number(config, "sliding_window", where)))
    window = int(_number(config, "sliding_window", where))
    pattern = sliding_layers(config, pruned.spec.family_record, pruned.spec.dims.layers, where)
    return [u32(Keys.Attention.SLIDING_WINDOW.format(arch=arch), window),
            Kv(Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), pattern, GGUFValueType.ARRAY,
               GGUFValueType.BOOL)], context


def _check_rotary_layers(arch: str, llama_cpp: GgufConventions, pruned: PrunedCheckpoint, where: Path) -> None:
    """llama.cpp's graph skips RoPE on a pattern fixed in the runtime; any other pattern is refused."""
    layers = pruned.spec.dims.layers
    actual = rotary_layers(pruned.spec.config, pruned.spec.family_record, layers, where)
    step = llama_cpp.no_rope_step
    expected = tuple(step is None or (i + 1) % step != 0 for i in range(layers))
    if actual != expected:
        raise ConvertError(f"{describe(actual)}, but llama.cpp's {arch} graph expects {describe(expected)} "
                           "(no GGUF key can say otherwise); use --format hf or onnx", where)


def _check_unexpressible(arch: str, llama_cpp: GgufConventions, pruned: PrunedCheckpoint, where: Path) -> None:
    config = pruned.spec.config
    _check_rotary_layers(arch, llama_cpp, pruned, where)
    key, allowed = llama_cpp.activation_key, llama_cpp.activations
    activation = config.get(key) or allowed[0]
    if activation not in allowed:
        raise ConvertError(f"'{key}' is {activation!r}, but llama.cpp's {arch} graph computes "
                           f"{' / '.join(allowed)}", where)
    for key in llama_cpp.unsupported_keys:
        if config.get(key) is not None:
            raise ConvertError(f"'{key}' is set ({config[key]!r}), which llama.cpp's {arch} graph ignores", where)
    partial = config.get("partial_rotary_factor")
    if partial is not None and partial != 1 and not llama_cpp.partial_rotary:
        raise ConvertError(f"'partial_rotary_factor' {partial!r} cannot be expressed in llama.cpp's {arch} GGUF",
                           where)
    dims = pruned.spec.dims
    if llama_cpp.k_norm_is_hidden and dims.kv_heads != dims.heads:
        raise ConvertError(f"'num_key_value_heads' is {dims.kv_heads}, but llama.cpp's {arch} graph sizes the k norm "
                           f"for num_attention_heads = {dims.heads} kv heads", where)
    if (not llama_cpp.head_dim_keys or llama_cpp.q_dim_is_hidden) and dims.head_dim * dims.heads != dims.hidden:
        raise ConvertError(f"'head_dim' is {dims.head_dim}, but llama.cpp's {arch} graph takes the head size as "
                           f"hidden_size / num_attention_heads = {dims.hidden / dims.heads:g}", where)
    scale = pruned.spec.family_record.attention_scale
    if scale is not None:
        expected = dims.hidden / dims.heads if dims.layers in llama_cpp.per_head_scale_layers else dims.head_dim
        actual = _number(config, scale.key, where, scale.default)
        if not math.isclose(actual, expected, rel_tol=1e-6):
            raise ConvertError(f"'{scale.key}' is {actual:g}, but llama.cpp's {arch} graph scales attention by "
                               f"1/sqrt({expected:g}) for this model", where)


def _ffn_length_kvs(arch: str, llama_cpp: GgufConventions, pruned: PrunedCheckpoint, where: Path) -> list[Kv]:
    """The FFN width keys (GgufConventions.ffn_lengths): pruned dimensions, or config values as written."""
    kvs = []
    for key, holds in llama_cpp.ffn_lengths:
        if holds.startswith("="):
            if pruned.spec.config.get(holds[1:]) is not None:
                kvs.append(u32(key.format(arch=arch), int(_number(pruned.spec.config, holds[1:], where))))
        else:
            kvs.append(u32(key.format(arch=arch), pruned.dims.size(holds)))
    return kvs


def _expert_kvs(arch: str, llama_cpp: GgufConventions, pruned: PrunedCheckpoint, where: Path) -> list[Kv]:
    """Expert count and top-k of a mixture of experts (none for a dense model), after checking that the
    router weights are normalised as llama.cpp's graph does it."""
    experts = pruned.spec.dims.experts
    if not experts:
        return []
    config = pruned.spec.config
    used = config.get("num_experts_per_tok")
    if not isinstance(used, int) or isinstance(used, bool) or not 0 < used <= experts:
        raise ConvertError(f"'num_experts_per_tok' must be a whole number from 1 to {experts}, got {used!r}", where)
    key = llama_cpp.norm_topk_key
    normalised = True if key is None else config.get(key, False)
    if bool(normalised) != llama_cpp.expert_weights_norm:
        done = "always renormalises" if llama_cpp.expert_weights_norm else "never renormalises"
        raise ConvertError(f"'{key}' is {normalised!r}, but llama.cpp's {arch} graph {done} the chosen experts' "
                           "router weights (no GGUF key can say otherwise); use --format hf", where)
    return [u32(Keys.LLM.EXPERT_COUNT.format(arch=arch), experts),
            u32(Keys.LLM.EXPERT_USED_COUNT.format(arch=arch), used)]


def hyperparameters(pruned: PrunedCheckpoint) -> list[Kv]:
    """Every `{arch}.*` key for the pruned model; raises ConvertError for anything llama.cpp cannot express."""
    llama_cpp = gguf_conventions(pruned)
    arch = llama_cpp.arch
    where = _config_path(pruned)
    config = pruned.spec.config
    dims = pruned.dims
    _check_unexpressible(arch, llama_cpp, pruned, where)
    window, context = _window_kvs(arch, llama_cpp, pruned, where)
    kvs = [
        *([u32(Keys.LLM.VOCAB_SIZE.format(arch=arch), dims.vocab)] if llama_cpp.vocab_size_key else []),
        u32(Keys.LLM.CONTEXT_LENGTH.format(arch=arch), context),
        u32(Keys.LLM.EMBEDDING_LENGTH.format(arch=arch), dims.hidden),
        u32(Keys.LLM.BLOCK_COUNT.format(arch=arch), dims.layers),
        *_ffn_length_kvs(arch, llama_cpp, pruned, where),
        u32(Keys.Attention.HEAD_COUNT.format(arch=arch), dims.heads),
        u32(Keys.Attention.HEAD_COUNT_KV.format(arch=arch), dims.kv_heads),
        *([u32(Keys.Attention.KEY_LENGTH.format(arch=arch), dims.head_dim),
           u32(Keys.Attention.VALUE_LENGTH.format(arch=arch), dims.head_dim)] if llama_cpp.head_dim_keys else []),
        *([u32(Keys.Rope.DIMENSION_COUNT.format(arch=arch), _rotated(llama_cpp, config, dims.head_dim, where))]
          if llama_cpp.rope_dimension_key else []),
        f32(Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch), _number(config, "rms_norm_eps", where)),
    ]
    kvs += _expert_kvs(arch, llama_cpp, pruned, where)
    kvs += [f32(key.format(arch=arch), _number(config, source, where, default))
            for source, key, default in llama_cpp.scales]
    kvs += _rope_kvs(arch, llama_cpp, config, where)
    kvs += window
    for source, key in llama_cpp.softcapping:
        if config.get(source) is not None:
            kvs.append(f32(key.format(arch=arch), _number(config, source, where)))
        elif llama_cpp.softcapping_always:
            raise ConvertError(f"'{source}' is unset, but llama.cpp's {arch} graph always soft-caps", where)
    return kvs
