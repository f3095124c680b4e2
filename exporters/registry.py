"""Which exporter writes which format, and the one interface they all share.

Exporters are imported by name only when asked for, so `--format hf` never pays for onnx or
llama.cpp imports, and a missing optional dependency becomes a one-line error naming it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from converter.errors import ConvertError

if TYPE_CHECKING:
    from converter.prune import PrunedCheckpoint
    from converter.tokenizer import TokenizerRewrite
    from exporters.options import ExportOptions

EXPORTERS = {"hf": "exporters.hf", "gguf": "exporters.gguf", "onnx": "exporters.onnx"}
EXTRAS = {"onnx": "onnx"}  # the pip extra of compact-convert that installs a format's packages


class Exporter(Protocol):
    """`export(pruned, tokenizer, out_dir, options) -> files written`; out_dir is a staging folder.

    `tokenizer` is the rewrite a plan that drops tokens needs, or None when every token is kept.
    """

    def __call__(self, pruned: PrunedCheckpoint, tokenizer: TokenizerRewrite | None, out_dir: Path,
                 options: ExportOptions) -> list[Path]: ...


def exporter_for(fmt: str) -> Exporter:
    """The `export` function of format `fmt`, or a ConvertError saying what is missing."""
    try:
        module = importlib.import_module(EXPORTERS[fmt])
    except KeyError:
        raise ConvertError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORTERS)}") from None
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("exporters."):
            raise ConvertError(f"format {fmt!r} is not available in this version of compact-convert") from None
        package = (exc.name or "?").split(".")[0]
        how = f"pip install 'compact-convert[{EXTRAS[fmt]}]'" if fmt in EXTRAS else f"pip install {package}"
        raise ConvertError(f"format {fmt!r} needs the Python package '{package}'; install it with: {how}") from None
    export: Exporter = module.export
    return export


if TYPE_CHECKING:
    # mypy checks every exporter's `export` against the protocol here.
    import exporters.gguf
    import exporters.hf
    import exporters.onnx

    _CHECKED: tuple[Exporter, ...] = (exporters.hf.export, exporters.gguf.export, exporters.onnx.export)
