"""`general.*` keys: what the file is, where it came from, and what the pruning removed.

Standard keys carry the name, the source model (as `general.base_model.0.*`) and the file type;
`general.compact_convert.*` records the tool version, the prune summary and the command line
(with OUT spelled `OUT`, so the same job writes the same bytes wherever it writes them), so a
GGUF found on its own still says how it was made. llama.cpp ignores keys it does not know.
"""
from __future__ import annotations

import re

from gguf import GGML_QUANT_VERSION, GGUFValueType, Keys

from converter import __version__
from converter.prune import PrunedCheckpoint
from exporters.gguf.hparams import Kv, string, u32
from exporters.gguf.quant import OutType
from exporters.options import ExportOptions

PREFIX = "general.compact_convert."


def model_name(pruned: PrunedCheckpoint) -> str:
    """The source model's name: config `_name_or_path` when it names a model, else its folder name."""
    named = pruned.spec.config.get("_name_or_path")
    if isinstance(named, str) and named.strip() and "/" in named and not named.startswith(("/", ".")):
        return named.strip()
    return pruned.source.folder.resolve().name or "model"


def file_stem(pruned: PrunedCheckpoint) -> str:
    """A safe file name for `<name>.gguf`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name(pruned).split("/")[-1]).strip(".-")
    return stem or "model"


def provenance(pruned: PrunedCheckpoint, outtype: OutType, options: ExportOptions) -> list[Kv]:
    summary = pruned.summary()
    name = model_name(pruned)
    kvs = [
        string(Keys.General.TYPE, "model"),
        string(Keys.General.NAME, f"{name} (compact-convert)"),
        u32(Keys.General.BASE_MODEL_COUNT, 1),
        string(Keys.General.BASE_MODEL_NAME.format(id=0), name),
        u32(Keys.General.FILE_TYPE, int(outtype.file_type)),
        u32(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION),
        string(PREFIX + "version", __version__),
        u32(PREFIX + "vocab_size_before", summary["vocab_before"]),
        u32(PREFIX + "vocab_size_after", summary["vocab_after"]),
        u32(PREFIX + "intermediate_size_before", summary["ffn_before"]),
        u32(PREFIX + "intermediate_size_after", summary["ffn_after"]),
        Kv(PREFIX + "params_before", summary["params_before"], GGUFValueType.UINT64),
        Kv(PREFIX + "params_after", summary["params_after"], GGUFValueType.UINT64),
    ]
    if "moe_ffn_before" in summary:  # mixture of experts: every expert's width
        kvs += [u32(PREFIX + "moe_intermediate_size_before", summary["moe_ffn_before"]),
                u32(PREFIX + "moe_intermediate_size_after", summary["moe_ffn_after"])]
    method = pruned.plan.metadata.get("method")
    if isinstance(method, str) and method:
        kvs.append(string(PREFIX + "method", method))
    if options.command_line:
        kvs.append(string(PREFIX + "command_line", options.command_line))
    return kvs
