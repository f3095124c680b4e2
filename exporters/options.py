"""The options every exporter reads: one frozen model, filled by the CLI or by library callers."""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9


@dataclass(frozen=True)
class ExportOptions:
    """Settings shared by all exporters; each exporter ignores what does not apply to it."""

    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    outtype: str | None = None
    pre_tokenizer: str | None = None
    int4_block_size: int = 32
    progress: bool = True
    command_line: str = ""


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a plain byte count, as transformers' max_shard_size accepts."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "TB": 10**12, "B": 1}
    cleaned = text.strip().upper().replace(" ", "")
    for unit, factor in units.items():
        if cleaned.endswith(unit):
            number = cleaned[: -len(unit)]
            break
    else:
        number, factor = cleaned, 1
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or a byte count") from None
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return int(value * factor)
