"""Cross-check a checkpoint's headers against the ArchSpec its config.json implies."""
from __future__ import annotations

from dataclasses import replace

from converter.arch.config_dtype import check_config_dtype
from converter.arch.spec import ArchSpec, is_ignored_tensor
from converter.errors import ConvertError
from converter.io import Checkpoint


def with_checkpoint_layout(spec: ArchSpec, ckpt: Checkpoint) -> ArchSpec:
    """The spec with only the expert layout the checkpoint holds (stacked or per-expert tensors), or a
    ConvertError when it holds neither whole or mixes the two. Dense specs come back unchanged."""
    layouts = list(dict.fromkeys(s.layout for s in spec.slots if s.layout))
    if not layouts:
        return spec
    members = {layout: [s for s in spec.slots if s.layout == layout] for layout in layouts}
    complete = [layout for layout in layouts if all(s.name in ckpt for s in members[layout])]
    if not complete:
        nearest = max(layouts, key=lambda layout: sum(s.name in ckpt for s in members[layout]))
        missing = next(s.name for s in members[nearest] if s.name not in ckpt)
        raise ConvertError(f"tensor '{missing}' ({spec.architecture}, {nearest} layout) "
                           "is missing from the checkpoint", ckpt.folder)
    chosen = complete[0]
    names = {s.name for s in members[chosen]}
    stray = next((s.name for s in spec.slots if s.layout not in (None, chosen) and s.name not in names
                  and s.name in ckpt), None)
    if stray is not None:
        raise ConvertError(f"tensor '{stray}' is in another expert layout than the checkpoint's other "
                           f"({chosen}) expert tensors; a checkpoint must use one layout",
                           ckpt.tensors[stray].file)
    return replace(spec, slots=tuple(s for s in spec.slots if s.layout in (None, chosen)))


def check_against(spec: ArchSpec, ckpt: Checkpoint) -> None:
    """Every required tensor present with the configured shape and dtype, nothing unknown; else ConvertError."""
    spec = with_checkpoint_layout(spec, ckpt)
    for slot in spec.slots:
        info = ckpt.tensors.get(slot.name)
        if info is None:
            if slot.required:
                raise ConvertError(f"tensor '{slot.name}' ({spec.architecture}) is missing from the checkpoint",
                                   ckpt.folder)
            continue
        expected = slot.shape(spec.dims)
        if info.shape != expected:
            raise ConvertError(
                f"tensor '{slot.name}' has shape {list(info.shape)} but config.json implies {list(expected)}; "
                "the config does not match the weights", info.file)
    for info in ckpt:
        if spec.slot(info.name) is None and not is_ignored_tensor(info.name) and not spec.passes_through(info.name):
            raise ConvertError(f"tensor '{info.name}' is not part of the {spec.architecture} architecture; "
                               "compact-convert will not guess how to prune it", info.file)
    check_config_dtype(spec.config, ckpt)
