"""Architecture knowledge as data: family records and their resolution against a config.

`load_arch(folder)` gives an `ArchSpec` naming every tensor's role, shape and pruned axes;
`check_against` proves a checkpoint's headers agree with it before any output is written.
"""
from __future__ import annotations

from converter.arch.check import check_against, with_checkpoint_layout
from converter.arch.spec import (ArchSpec, ModelDims, TensorSlot, is_ignored_tensor, load_arch, read_config,
                                 resolve_arch, supported_architectures)

__all__ = ["ArchSpec", "ModelDims", "TensorSlot", "check_against", "is_ignored_tensor", "load_arch", "read_config",
           "resolve_arch", "supported_architectures", "with_checkpoint_layout"]
