"""Copy a file out of a model folder only if it really lives there.

A hostile model folder can hold a `tokenizer.model` or chat template that is a symlink to
`/etc/shadow`; copying it would leak that file into the output. Every companion file passes
through here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from converter.errors import ConvertError


def copy_inside(src: Path, folder: Path, dest: Path) -> Path:
    """Copy `src` to `dest`, refusing a source that resolves outside `folder`."""
    if not src.resolve().is_relative_to(folder.resolve()):
        raise ConvertError("is a link that leads outside the model folder; refusing to read it", src)
    return Path(shutil.copyfile(src, dest))
