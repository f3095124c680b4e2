"""The exception tokenizer surgery raises for input it cannot rewrite faithfully.

It is a `ConvertError` (so the CLI reports it in one line and exits non-zero) and a
`ValueError` (so library callers can treat it as bad input). The message names the file.
"""
from __future__ import annotations

from converter.errors import ConvertError


class TokenizerError(ConvertError, ValueError):
    """A tokenizer file that cannot be rewritten without changing what it means."""
