"""The one-file outputs of the stage commands (scores, plans): refused early, before any work.

Kept apart from the commands that score so that `plan` and `merge-scores` check their output
without importing torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from converter.errors import ConvertError


def check_output_file(path: Path, force: bool) -> None:
    """Refuse an existing file without --force, a missing parent folder or one we cannot write to."""
    if path.exists() and not force:
        raise ConvertError("exists; pass --force to replace it", path)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise ConvertError("the folder for the output does not exist", parent)
    if not os.access(parent, os.W_OK):
        raise ConvertError("cannot write here (permission denied)", parent)
