"""PrunePlan: the frozen, versioned, human-editable description of what to keep.

A plan lists the original token ids and, per layer, the original FFN channel indices that
survive (and, for a mixture-of-experts model, per layer and expert, each expert's kept channels).
New ids are the kept ids in order (new id i is old id kept_token_ids[i]), so the plan is also the
id map. It is a pure value: scores and a budget make one, exporters only read it,
and it is validated against the checkpoint headers before a byte of output is written.
"""
from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.arch import ArchSpec
from converter.errors import ConvertError
from converter.io.jsonfile import read_json_object

if TYPE_CHECKING:
    from converter.ffn_refit import FfnRefit

# Version 2 added `kept_expert_channels`; plans without it are still written (and read) as version 1.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_PLAN_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class PrunePlan:
    """Kept token ids, kept FFN channels per layer and kept expert channels per layer and expert, all as
    original indices, sorted. A model without a dense FFN (its MLPs are all experts) keeps no FFN layers;
    a dense model keeps no expert channels."""

    kept_token_ids: tuple[int, ...]
    kept_ffn_channels: tuple[tuple[int, ...], ...]
    source_fingerprint: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    origin: str | None = field(default=None, compare=False, repr=False)
    refit: FfnRefit | None = field(default=None, compare=False, repr=False)
    kept_expert_channels: tuple[tuple[tuple[int, ...], ...], ...] = ()

    @classmethod
    def identity(cls, spec: ArchSpec, fingerprint: str | None = None) -> PrunePlan:
        """A plan that keeps everything: the rewrite must reproduce the input bit for bit."""
        d = spec.dims
        channels, expert = tuple(range(d.ffn)), tuple(range(d.moe_ffn))
        return cls(tuple(range(d.vocab)), tuple(channels for _ in range(d.layers)) if d.ffn else (), fingerprint,
                   {"method": "identity"},
                   kept_expert_channels=tuple(tuple(expert for _ in range(d.experts)) for _ in range(d.layers))
                   if d.experts else ())

    @property
    def vocab_size(self) -> int:
        return len(self.kept_token_ids)

    @property
    def intermediate_size(self) -> int:
        return len(self.kept_ffn_channels[0]) if self.kept_ffn_channels else 0

    @property
    def moe_intermediate_size(self) -> int:
        """Every expert's kept width (0 for a dense model's plan)."""
        return len(self.kept_expert_channels[0][0]) if self.kept_expert_channels and self.kept_expert_channels[0] else 0

    def with_tokens(self, kept_token_ids: Sequence[int], **metadata: Any) -> PrunePlan:
        """The same plan with a different (e.g. tokenizer-expanded) keep set."""
        return replace(self, kept_token_ids=tuple(sorted(kept_token_ids)), metadata={**self.metadata, **metadata})

    def keeps_all_tokens(self, vocab: int) -> bool:
        return self.kept_token_ids == tuple(range(vocab))

    def validate(self, spec: ArchSpec, fingerprint: str | None, path: Path | str | None = None) -> None:
        """Check the plan fits the model whose headers gave `spec`; raise ConvertError if not."""
        path = path or self.origin or "prune_plan.json"
        if self.source_fingerprint is not None and fingerprint is not None and self.source_fingerprint != fingerprint:
            raise ConvertError(f"source_fingerprint {self.source_fingerprint} does not match the checkpoint "
                               f"({fingerprint}); the plan was made for another model", path)
        _check_ids(self.kept_token_ids, spec.dims.vocab, "kept_token_ids", "vocab_size", path)
        self._validate_experts(spec, path)
        if not spec.dims.ffn:
            if self.kept_ffn_channels:
                raise ConvertError("kept_ffn_channels must be empty: the model has no dense FFN (its experts' "
                                   "channels are kept_expert_channels)", path)
            return
        if len(self.kept_ffn_channels) != spec.dims.layers:
            raise ConvertError(f"kept_ffn_channels has {len(self.kept_ffn_channels)} layers but the model has "
                               f"{spec.dims.layers}", path)
        counts = {len(c) for c in self.kept_ffn_channels}
        if len(counts) != 1:
            raise ConvertError(f"kept_ffn_channels keeps {min(counts)} to {max(counts)} channels per layer; every "
                               "layer must keep the same number so the result has one intermediate_size", path)
        for layer, channels in enumerate(self.kept_ffn_channels):
            _check_ids(channels, spec.dims.ffn, f"kept_ffn_channels[{layer}]", "intermediate_size", path)
        if self.refit is not None:
            self.refit.check(spec.dims.layers, spec.dims.hidden, self.intermediate_size, path)

    def _validate_experts(self, spec: ArchSpec, path: Path | str) -> None:
        """Per layer, per expert: the same number of kept channels everywhere (one moe_intermediate_size)."""
        d = spec.dims
        if not d.experts:
            if self.kept_expert_channels:
                raise ConvertError("kept_expert_channels is for mixture-of-experts models; this model has no experts",
                                   path)
            return
        if self.refit is not None:
            raise ConvertError("a down_proj refit (ffn_refit) is not built for mixture-of-experts models; export "
                               "the plan without it", path)
        if len(self.kept_expert_channels) != d.layers:
            raise ConvertError(f"kept_expert_channels has {len(self.kept_expert_channels)} layers but the model has "
                               f"{d.layers}", path)
        for layer, experts in enumerate(self.kept_expert_channels):
            if len(experts) != d.experts:
                raise ConvertError(f"kept_expert_channels[{layer}] lists {len(experts)} experts but the model has "
                                   f"{d.experts} per layer", path)
        counts = {len(c) for experts in self.kept_expert_channels for c in experts}
        if len(counts) != 1:
            raise ConvertError(f"kept_expert_channels keeps {min(counts)} to {max(counts)} channels per expert; every "
                               "expert of every layer must keep the same number so the result has one "
                               "moe_intermediate_size", path)
        for layer, experts in enumerate(self.kept_expert_channels):
            for expert, channels in enumerate(experts):
                _check_ids(channels, d.moe_ffn, f"kept_expert_channels[{layer}][{expert}]", "expert width", path)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION if self.kept_expert_channels else 1,
            "vocab_size": self.vocab_size,
            "intermediate_size": self.intermediate_size,
        }
        if self.kept_expert_channels:
            out["moe_intermediate_size"] = self.moe_intermediate_size
        out["kept_token_ids"] = list(self.kept_token_ids)
        out["kept_ffn_channels"] = [list(c) for c in self.kept_ffn_channels]
        if self.kept_expert_channels:
            out["kept_expert_channels"] = [[list(c) for c in experts] for experts in self.kept_expert_channels]
        out["metadata"] = dict(self.metadata)
        if self.source_fingerprint is not None:
            out["source_fingerprint"] = self.source_fingerprint
        return out

    def save(self, path: Path) -> Path:
        """Write the JSON, and the refit's weights beside it (see converter.ffn_refit) when the plan has one."""
        obj = self.to_json()
        if self.refit is not None:
            from converter.ffn_refit import refit_path

            side = refit_path(path)
            obj["ffn_refit"] = {"file": side.name, "sha256": self.refit.save(side), "ridge": self.refit.ridge}
        lines = json.dumps(obj, separators=(",", ":"))
        path.write_text(_pretty(obj) if len(lines) < 2_000_000 else lines, encoding="utf-8")
        return path

    def files(self, path: Path) -> list[Path]:
        """Every file `save(path)` writes."""
        if self.refit is None:
            return [path]
        from converter.ffn_refit import refit_path

        return [path, refit_path(path)]

    @classmethod
    def from_json(cls, raw: object, path: Path | str = "prune_plan.json") -> PrunePlan:
        if not isinstance(raw, dict):
            raise ConvertError("is not a JSON object", path)
        version = raw.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ConvertError(f"format_version must be one of {', '.join(map(str, READABLE_VERSIONS))}, got "
                               f"{version!r}", path)
        tokens = _int_list(raw.get("kept_token_ids"), "kept_token_ids", path)
        layers = raw.get("kept_ffn_channels")
        if not isinstance(layers, list):  # empty for a model whose MLPs are all experts
            raise ConvertError("kept_ffn_channels must be a list with one list of channels per layer", path)
        # Every layer lists mostly the same channel indices; as separate objects an 80-layer plan would
        # hold 80 copies of each (28 bytes apiece) for the whole rewrite, so peak memory would grow
        # with depth. Shared through one dict (looked up by map, in C), a layer costs one pointer per
        # kept channel; json's parse_int hook would do the same with a Python call per number.
        shared: dict[int, int] = {}
        channels = tuple(_sorted_shared(_int_list(c, f"kept_ffn_channels[{i}]", path), shared)
                         for i, c in enumerate(layers))
        experts = _expert_channels(raw, version, shared, path)
        fingerprint = raw.get("source_fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ConvertError("source_fingerprint must be a string", path)
        metadata = raw.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ConvertError("metadata must be an object", path)
        refit = None
        if raw.get("ffn_refit") is not None:
            from converter.ffn_refit import FfnRefit

            refit = FfnRefit.load(Path(path), raw["ffn_refit"])
        return cls(tuple(sorted(tokens)), channels, fingerprint, metadata, str(path), refit, experts)

    @classmethod
    def load(cls, path: Path) -> PrunePlan:
        return cls.from_json(read_json_object(path, MAX_PLAN_BYTES, "a prune plan"), path)


def _pretty(obj: dict[str, Any]) -> str:
    """Indented JSON with each id list on one line: readable, diffable, and not a million lines long."""
    parts = []
    for key, value in obj.items():
        if key == "kept_ffn_channels":
            body = ",\n".join("    " + json.dumps(v, separators=(",", ":")) for v in value)
            parts.append(f'  "{key}": [\n{body}\n  ]' if value else f'  "{key}": []')
        elif key == "kept_expert_channels":  # one line per expert, one block per layer
            body = ",\n".join("    [\n" + ",\n".join("      " + json.dumps(c, separators=(",", ":")) for c in layer)
                              + "\n    ]" for layer in value)
            parts.append(f'  "{key}": [\n{body}\n  ]')
        elif key == "metadata":
            parts.append(f'  "{key}": ' + json.dumps(value, indent=2).replace("\n", "\n  "))
        else:
            parts.append(f'  "{key}": ' + json.dumps(value, separators=(",", ":")))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _expert_channels(raw: dict[str, Any], version: int, shared: dict[int, int],
                     path: Path | str) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """`kept_expert_channels` (format version 2): per layer, per expert, the kept channels; () when absent."""
    layers = raw.get("kept_expert_channels")
    if layers is None:
        return ()
    if version < 2:
        raise ConvertError("kept_expert_channels needs format_version 2", path)
    if not isinstance(layers, list) or not all(isinstance(experts, list) for experts in layers):
        raise ConvertError("kept_expert_channels must be a list with, per layer, one list of channels per expert",
                           path)
    return tuple(tuple(_sorted_shared(_int_list(c, f"kept_expert_channels[{i}][{e}]", path), shared)
                       for e, c in enumerate(experts)) for i, experts in enumerate(layers))


def _sorted_shared(ids: list[int], shared: dict[int, int]) -> tuple[int, ...]:
    """`ids` sorted, each value replaced by the first object seen with that value."""
    return tuple(sorted(map(shared.setdefault, ids, ids)))


def _int_list(value: object, key: str, path: Path | str) -> list[int]:
    if not isinstance(value, list) or not set(map(type, value)) <= {int}:  # not bool: its type is bool
        raise ConvertError(f"{key} must be a list of integers", path)
    return value


def _check_ids(ids: Sequence[int], limit: int, key: str, what: str, path: Path | str) -> None:
    if not ids:
        raise ConvertError(f"{key} keeps nothing; a model needs at least one entry", path)
    if ids[0] < 0 or ids[-1] >= limit:
        bad = ids[0] if ids[0] < 0 else ids[-1]
        raise ConvertError(f"{key} contains {bad}, outside 0..{limit - 1} (the model's {what})", path)
    if any(map(operator.eq, ids, islice(ids, 1, None))):  # sorted: a repeat sits next to itself
        twice = next(a for a, b in zip(ids, ids[1:]) if a == b)
        raise ConvertError(f"{key} lists {twice} twice", path)
