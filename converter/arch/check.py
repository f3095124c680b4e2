"""Cross-check a checkpoint's headers against the ArchSpec its config.json implies."""
from __future__ import annotations

from converter.arch.config_dtype import check_config_dtype
from converter.arch.spec import ArchSpec, is_ignored_tensor
from converter.errors import ConvertError
from converter.io import Checkpoint


def check_against(spec: ArchSpec, ckpt: Checkpoint) -> None:
    """Every required tensor present with the configured shape and dtype, nothing unknown; else ConvertError."""
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
