"""The one exception type users see.

Every problem with user input (a model folder, a plan, an option) is raised as `ConvertError`
with a single-line message that names the file and says what is wrong and how to fix it. The
CLI prints it and exits non-zero; anything else escaping is a bug in compact-convert.
"""
from __future__ import annotations

from pathlib import Path


class ConvertError(Exception):
    """A problem with the user's input, explained in one line."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        text = " ".join(message.split())
        if path is not None:
            text = f"{path}: {text}"
        super().__init__(text)
