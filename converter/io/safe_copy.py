"""Copy a file out of a model folder only if it really lives there.

A hostile model folder can hold a `tokenizer.model` or chat template that is a symlink to
`/etc/shadow`; copying it would leak that file into the output. Every companion file passes
through here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from converter.io.model_folder import resolve_inside


def copy_inside(src: Path, folder: Path, dest: Path) -> Path:
    """Copy `src` to `dest`, refusing a source that resolves where `folder`'s files may not (see model_folder)."""
    resolve_inside(src, folder)
    return Path(shutil.copyfile(src, dest))
