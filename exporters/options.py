"""The options every exporter reads: one frozen model, filled by the CLI or by library callers.

Each user-facing field declares its flag once (converter.flag_fields), and the commands build
their export flags from these fields; progress bars and the recorded command line are set by the
command, not by a flag of their own here.
"""
from __future__ import annotations

from dataclasses import dataclass

from converter.errors import ConvertError
from converter.flag_fields import Flag, check_minimums, flag, internal
from converter.score.matmul_inputs import MatmulSums

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
# MatMulNBits' accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (onnxruntime-genai's CPU choice).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
LM_HEAD_TYPES = ("int4", "int8", "fp16", "fp32")
# onnxruntime execution providers an ONNX export is written for (onnxruntime-genai's builder's `-e`).
EXECUTION_PROVIDERS = ("cpu", "cuda", "dml", "webgpu")
ONNX_LOGITS = ("all", "last")


def default_accuracy_level(ep: str) -> int:
    """The builder's default: int8 activations (4) where the 4-bit kernel has them (cpu, webgpu), else unset (0)."""
    return 4 if ep in ("cpu", "webgpu") else 0


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


def parse_accuracy_level(text: str) -> int:
    """One of MatMulNBits' accuracy levels, 0 to 4."""
    if text.strip() not in [str(level) for level in ACCURACY_LEVELS]:
        raise ValueError(f"accuracy level {text!r} must be one of {', '.join(map(str, ACCURACY_LEVELS))}")
    return int(text)


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
    ep: str = flag("cpu", Flag(
        "onnxruntime execution provider the ONNX model is written for: cpu (default), cuda, dml or webgpu. As "
        "onnxruntime-genai's builder does, int4, int8 and fp16 models on a GPU provider compute in fp16 (fused "
        "graph), genai_config.json selects the provider, and the accuracy level defaults to 0 on cuda and dml",
        choices=EXECUTION_PROVIDERS))
    int4_accuracy_level: int | None = flag(None, Flag(
        "accuracy_level of every ONNX MatMulNBits node (int4, int8): 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
        "activations (default 4 on cpu and webgpu, 0 on cuda and dml: onnxruntime-genai's builder's choices)",
        parse=parse_accuracy_level, metavar="{0,1,2,3,4}"))
    int4_symmetric: bool | None = flag(None, Flag(
        "ONNX int4 blocks symmetric, or with --no-int4-symmetric uint4 codes with a zero point per block; default: "
        "symmetric on the fused graph (Llama, Qwen2, Qwen3, Gemma), asymmetric on the traced graph"))
    int4_lm_head: str | None = flag(None, Flag(
        "the ONNX LM head's type under --outtype int4: int4 (default), int8 (MatMulNBits 8 bits), fp16 or fp32 "
        "(a plain MatMul)", choices=LM_HEAD_TYPES))
    onnx_logits: str = flag("all", Flag(
        "logits the ONNX graph returns: all (every position, the default, as onnxruntime-genai's builder writes "
        "it) or last (only the last position's, the builder's prune_lm_head: a prompt runs the LM head once, "
        "not once a token; what onnxruntime-genai needs to generate; Llama, Qwen2/3 and Gemma graphs)",
        choices=ONNX_LOGITS))
    progress: bool = internal(True)
    command_line: str = internal("")
    report_plots: bool = flag(True, Flag(
        "draw the report's PNG plots (report.json and report.md are always written)", name="report"))
    # Sums of squared matmul inputs from scoring (pipeline.export takes them from the plan's scores):
    # the GGUF exporter writes llama.cpp's imatrix.gguf from them, and its K-quants are weighted by it.
    importance: MatmulSums | None = internal(None)

    @property
    def accuracy_level(self) -> int:
        """--int4-accuracy-level, or the execution provider's default."""
        level = self.int4_accuracy_level
        return default_accuracy_level(self.ep) if level is None else level

    def __post_init__(self) -> None:
        check_minimums(self)
        if self.ep not in EXECUTION_PROVIDERS:
            raise ConvertError(f"--ep must be one of {', '.join(EXECUTION_PROVIDERS)}, got {self.ep!r}")
        if self.int4_accuracy_level is not None and self.int4_accuracy_level not in ACCURACY_LEVELS:
            raise ConvertError(f"--int4-accuracy-level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, "
                               f"got {self.int4_accuracy_level}")
        if self.onnx_logits not in ONNX_LOGITS:
            raise ConvertError(f"--onnx-logits must be one of {', '.join(ONNX_LOGITS)}, got {self.onnx_logits!r}")
        if self.int4_lm_head is not None and self.int4_lm_head not in LM_HEAD_TYPES:
            raise ConvertError(f"--int4-lm-head must be one of {', '.join(LM_HEAD_TYPES)}, got {self.int4_lm_head!r}")

