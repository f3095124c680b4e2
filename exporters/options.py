"""The options every exporter reads: one frozen model, filled by the CLI or by library callers.

Each user-facing field declares its flag once (converter.flag_fields), and the commands build
their export flags from these fields; progress bars and the recorded command line are set by the
command, not by a flag of their own here.
"""
from __future__ import annotations

from dataclasses import dataclass

from converter.flag_fields import Flag, check_minimums, flag, internal
from converter.score.matmul_inputs import MatmulSums

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB' or a plain byte count, as transformers' max_shard_size accepts."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "TB": 10**12, "B": 1}
    cleaned = text.strip().upper().replace(" ", "")
    unit = next((u for u in units if cleaned.endswith(u)), "")
    number, factor = (cleaned[: -len(unit)], units[unit]) if unit else (cleaned, 1)
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or a byte count") from None
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return int(value * factor)


@dataclass(frozen=True)
class ExportOptions:
    """Settings shared by all exporters; each exporter ignores what does not apply to it."""

    max_shard_size: int = flag(DEFAULT_MAX_SHARD_SIZE, Flag(
        "largest safetensors shard for --format hf, e.g. 5GB (default) or 500MB", parse=parse_size))
    outtype: str | None = flag(None, Flag(
        "weight type: hf keeps the source dtype; gguf f32|f16|bf16|q8_0|q4_0|...; onnx fp32|fp16|int8|int4"))
    pre_tokenizer: str | None = flag(None, Flag(
        "GGUF pre-tokenizer name, overriding the one derived from the source tokenizer", name="pre"))
    int4_block_size: int = flag(32, Flag("block size of ONNX int4 weights (default 32)"))
    progress: bool = internal(True)
    command_line: str = internal("")
    report_plots: bool = flag(True, Flag(
        "draw the report's PNG plots (report.json and report.md are always written)", name="report"))
    # Sums of squared matmul inputs from scoring (pipeline.export takes them from the plan's scores):
    # the GGUF exporter writes llama.cpp's imatrix.gguf from them, and its K-quants are weighted by it.
    importance: MatmulSums | None = internal(None)

    def __post_init__(self) -> None:
        check_minimums(self)

