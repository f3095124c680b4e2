"""The opened input: a model folder whose config, family and safetensors headers agree.

Every stage needs "the model the user pointed at", checked once: scoring loads it, planning does
its parameter arithmetic on it, the surgery streams from it. It lives in this low module
(io, arch and errors below it, nothing above) so that each stage imports it directly instead of
reaching up into the pipeline that orchestrates them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.arch import ArchSpec, check_against, load_arch, with_checkpoint_layout
from converter.errors import ConvertError
from converter.io import Checkpoint
from converter.io.model_folder import check_links


@dataclass(frozen=True)
class Source:
    """An opened, header-checked input model."""

    folder: Path
    checkpoint: Checkpoint
    spec: ArchSpec


def open_source(folder: Path) -> Source:
    """Open a model folder and prove its headers agree with its config.json."""
    if not folder.is_dir():
        raise ConvertError("is not a folder", folder)
    check_links(folder)  # before config.json is parsed: a link out of the folder is refused as a link
    spec = load_arch(folder)
    ckpt = Checkpoint.open(folder)
    spec = with_checkpoint_layout(spec, ckpt)
    check_against(spec, ckpt)
    return Source(folder, ckpt, spec)
