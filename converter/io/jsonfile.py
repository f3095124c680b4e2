"""Read a JSON object from a file a stranger may have written.

Configs, indexes, plans and tokenizer files all need the same guard: a size cap before parsing
(a 10 GB "config" must not be read into memory), clear one-line errors for missing, unreadable,
non-UTF-8, malformed or deeply nested files, and an object (not a list or a number) at the top.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converter.errors import ConvertError


def read_json_object(path: Path, max_bytes: int, what: str, missing: str = "does not exist") -> dict[str, Any]:
    """Parse `path` as a JSON object of at most `max_bytes`, or raise ConvertError naming it."""
    return parse_json_object(read_capped(path, max_bytes, what, missing), path, what)


def read_capped(path: Path, max_bytes: int, what: str, missing: str = "does not exist") -> bytes:
    """The bytes of `path` if it has at most `max_bytes`, or a ConvertError naming it."""
    try:
        if path.stat().st_size > max_bytes:
            raise ConvertError(f"is implausibly large for {what} ({path.stat().st_size:,} bytes)", path)
        return path.read_bytes()
    except FileNotFoundError:
        raise ConvertError(missing, path) from None
    except OSError as exc:
        raise ConvertError(f"cannot be parsed as {what} ({type(exc).__name__}: {exc})", path) from exc


def parse_json_object(raw: bytes, path: Path, what: str) -> dict[str, Any]:
    """`raw` (the bytes of `path`) parsed as a JSON object, or a ConvertError naming `path`."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ConvertError(f"cannot be parsed as {what} ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(value, dict):
        raise ConvertError(f"is not a JSON object, so it cannot be {what}", path)
    return value
