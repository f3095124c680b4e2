"""Resolve a model's config.json against the family tables into a concrete ArchSpec.

The ArchSpec says, for this particular model, which tensors must exist, their exact shapes and
which axes a plan cuts. It is checked against the checkpoint headers before anything is written,
so a config that disagrees with its weights is caught up front, not halfway through an export.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.arch.families import FAMILIES, Family
from converter.errors import ConvertError
from converter.io.jsonfile import read_json_object

MAX_CONFIG_BYTES = 4 * 1024 * 1024
LIMITS = {"vocab": 16_777_216, "hidden": 1_048_576, "ffn": 4_194_304, "layers": 4096, "heads": 4096,
          "kv_heads": 4096, "head_dim": 65_536, "experts": 65_536}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class ModelDims:
    """The named dimensions that shapes in the family records refer to."""

    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    # Mixture of experts: the number of routed experts per layer and each one's FFN width (0: dense).
    experts: int = 0
    moe_ffn: int = 0

    def size(self, dim: str) -> int:
        """A named dimension, a derived one (q_dim, kv_dim), a literal ("1"), or a sum of multiples of
        them, the shape of a fused tensor: "2*ffn" (gate and up rows), "q_dim+2*kv_dim" (q, k and v rows)."""
        if dim.isdigit():
            return int(dim)
        if "+" in dim or "*" in dim:
            return sum(int(count or 1) * self.size(name) for count, _, name in
                       (term.strip().rpartition("*") for term in dim.split("+")))
        derived = {"q_dim": self.heads * self.head_dim, "kv_dim": self.kv_heads * self.head_dim}
        return derived[dim] if dim in derived else int(getattr(self, dim))


@dataclass(frozen=True)
class TensorSlot:
    """One tensor the architecture expects, with its role and named dimensions."""

    name: str
    role: str
    dims: tuple[str, ...]
    layer: int | None
    required: bool
    expert: int | None = None  # the expert a per-expert 2-D tensor belongs to
    layout: str | None = None  # the on-disk expert layout it is part of (see TensorTemplate.layout)

    def shape(self, dims: ModelDims) -> tuple[int, ...]:
        return tuple(dims.size(d) for d in self.dims)

    def axis(self, dim: str) -> int | None:
        """Which axis a plan cuts for `dim` ("vocab", "ffn" or "moe_ffn"), if any: one named `dim` or `k*dim`."""
        cut = self.cut(dim)
        return None if cut is None else cut[0]

    def cut(self, dim: str) -> tuple[int, int] | None:
        """(axis, copies) of the axis a plan cuts for `dim`: copies is k for an axis named `k*dim`, a fused
        tensor holding k blocks of `dim` one after another (Phi-3's gate_up_proj: "2*ffn"), each block cut
        with the same kept indices."""
        for index, name in enumerate(self.dims):
            count, star, base = name.replace(" ", "").rpartition("*")
            if base == dim and (not star or count.isdigit()):
                return index, int(count) if star else 1
        return None


@dataclass(frozen=True)
class ArchSpec:
    """A supported model as data: its family record, dimensions, tied embeddings, expected tensors."""

    family_record: Family
    architecture: str
    model_type: str
    dims: ModelDims
    tied_embeddings: bool
    slots: tuple[TensorSlot, ...]
    # The language model's config (a multimodal checkpoint's text section, its defaults filled in and the
    # top level's other keys beside it); `file_config` is config.json as written.
    config: Mapping[str, Any] = field(repr=False, hash=False, compare=False)
    file_config: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False, compare=False)

    @property
    def family(self) -> str:
        """The family's name: llama, qwen2, gemma3, ..."""
        return self.family_record.name

    def passes_through(self, name: str) -> bool:
        """Whether a tensor belongs to another tower (vision, projector) that is copied unchanged."""
        return name.startswith(self.family_record.passthrough) if self.family_record.passthrough else False

    def slot(self, name: str) -> TensorSlot | None:
        return self._by_name().get(name)

    def _by_name(self) -> dict[str, TensorSlot]:
        cache = self.__dict__.get("_slot_cache")
        if cache is None:
            cache = {s.name: s for s in self.slots}
            object.__setattr__(self, "_slot_cache", cache)
        return cache


def supported_architectures() -> list[str]:
    return sorted(a for family in FAMILIES.values() for a in family.architectures)


def read_config(folder: Path) -> dict[str, Any]:
    """Parse config.json, refusing a missing, oversized or non-object file."""
    return read_json_object(folder / "config.json", MAX_CONFIG_BYTES, "a model config",
                            missing="is missing; a Hugging Face model folder needs its config.json")


def _family_of(config: Mapping[str, Any], path: Path) -> tuple[Family, str]:
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if arch in family.architectures:
            return family, arch
    for family in FAMILIES.values():
        if arch is None and model_type in family.model_types:
            return family, family.architectures[0]
    shown = arch or model_type or "no 'architectures' or 'model_type'"
    raise ConvertError(f"architecture {shown!r} is not supported; supported: {', '.join(supported_architectures())}",
                       path)


def _positive_int(config: Mapping[str, Any], key: str, limit: int, path: Path, default: object = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise ConvertError(f"'{key}' must be a positive integer no larger than {limit}, got {value!r}", path)
    return value


def dims_from_config(config: Mapping[str, Any], path: Path, family: Family | None = None) -> ModelDims:
    """The named dimensions of `config`; `family` says which keys hold the FFN and expert sizes."""
    ffn_key = family.ffn_key if family is not None else "intermediate_size"
    experts, moe_ffn = _expert_dims(config, path, family) if family is not None else (0, 0)
    heads = _positive_int(config, "num_attention_heads", LIMITS["heads"], path)
    hidden = _positive_int(config, "hidden_size", LIMITS["hidden"], path)
    head_dim = config.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConvertError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}", path)
        head_dim = hidden // heads
    return ModelDims(
        vocab=_positive_int(config, "vocab_size", LIMITS["vocab"], path),
        hidden=hidden,
        ffn=_positive_int(config, ffn_key, LIMITS["ffn"], path) if ffn_key else 0,
        layers=_positive_int(config, "num_hidden_layers", LIMITS["layers"], path),
        heads=heads,
        kv_heads=_positive_int(config, "num_key_value_heads", LIMITS["kv_heads"], path, default=heads),
        head_dim=_positive_int({"head_dim": head_dim}, "head_dim", LIMITS["head_dim"], path),
        experts=experts,
        moe_ffn=moe_ffn,
    )


def _expert_dims(config: Mapping[str, Any], path: Path, family: Family) -> tuple[int, int]:
    """(experts, moe_ffn) of a mixture-of-experts family, (0, 0) for a dense one. Layers with a dense MLP
    among the sparse ones (Qwen-MoE's `mlp_only_layers`, `decoder_sparse_step`) are refused, not guessed."""
    if family.moe_ffn_key is None:
        return 0, 0
    count_key = next((k for k in family.experts_keys if k in config), family.experts_keys[0])
    experts = _positive_int(config, count_key, LIMITS["experts"], path)
    dense = config.get("mlp_only_layers") or []
    if dense or config.get("decoder_sparse_step", 1) not in (1, None):
        what = f"mlp_only_layers {dense}" if dense else f"decoder_sparse_step {config.get('decoder_sparse_step')!r}"
        raise ConvertError(f"{what} mixes dense MLP layers among the expert layers, which compact-convert does "
                           "not support; only models whose every layer is sparse", path)
    return experts, _positive_int(config, family.moe_ffn_key, LIMITS["ffn"], path)


def _slots(family: Family, dims: ModelDims, tied: bool) -> tuple[TensorSlot, ...]:
    """Required tensors first, then optional ones, each in table order, per layer (and per expert)."""
    slots: list[TensorSlot] = []
    for required in (True, False):
        for t in (t for t in family.tensors if t.required == required):
            for layer in range(dims.layers) if t.per_layer else [None]:
                for expert in range(dims.experts) if t.per_expert else [None]:
                    name = family.text_prefix + t.name.format(layer=layer, expert=expert)
                    needed = required and not (tied and t.role == "lm_head")
                    slots.append(TensorSlot(name, t.role, t.shape, layer, needed, expert, t.layout))
    return tuple(slots)


def text_config_of(family: Family, config: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """The language model's config: config.json itself, or its text section (multimodal checkpoints) over
    the text config class's defaults, with the top level's scalar keys (dtype, token ids) beside it."""
    if family.text_config is None:
        return config
    section = config.get(family.text_config, {})
    if not isinstance(section, Mapping):
        raise ConvertError(f"'{family.text_config}' must be an object, got {section!r}", path)
    outer = {k: v for k, v in config.items() if not isinstance(v, Mapping) and k != "architectures"}
    return {**outer, **dict(family.text_defaults), **section}


def resolve_arch(config: Mapping[str, Any], path: Path) -> ArchSpec:
    """Turn a parsed config.json into an ArchSpec, or raise a ConvertError naming the problem."""
    family, arch = _family_of(config, path)
    file_config, config = config, text_config_of(family, config, path)
    dims = dims_from_config(config, path, family)
    tied = file_config.get("tie_word_embeddings", config.get("tie_word_embeddings", family.tied_embeddings))
    if not isinstance(tied, bool):
        raise ConvertError(f"'tie_word_embeddings' must be true or false, got {tied!r}", path)
    slots = _slots(family, dims, tied)
    first_layout = next((s.layout for s in slots if s.layout), None)  # alternatives: count one of them
    params = sum(math.prod(s.shape(dims)) for s in slots if s.layout in (None, first_layout))
    if params > 10**13:
        raise ConvertError(f"describes {params:.3g} parameters, which is absurd; the config is corrupt", path)
    return ArchSpec(family, arch, str(file_config.get("model_type", "")), dims, tied, slots, config, file_config)


def load_arch(folder: Path) -> ArchSpec:
    """Read `folder/config.json` and resolve it."""
    return resolve_arch(read_config(folder), folder / "config.json")


def is_ignored_tensor(name: str) -> bool:
    """Buffers some old checkpoints saved that carry no weights (transformers drops them too)."""
    return name.endswith(IGNORED_SUFFIXES)
