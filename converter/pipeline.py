"""The conversion as library calls: open and check the input, settle the plan, export.

The CLI is a thin shell over these functions, and tests call them directly. Everything that can
be checked from headers (architecture, shapes, plan, output location) is checked before the
staging folder is created.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.arch import ArchSpec, check_against, load_arch
from converter.errors import ConvertError
from converter.io import Checkpoint
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.report import ReportContext
from exporters.options import ExportOptions
from exporters.staging import StagedOutput, check_output_location

EXPORTERS = {"hf": "exporters.hf", "gguf": "exporters.gguf", "onnx": "exporters.onnx"}


@dataclass(frozen=True)
class Source:
    """An opened, header-checked input model."""

    folder: Path
    checkpoint: Checkpoint
    spec: ArchSpec


def open_source(folder: Path) -> Source:
    """Open a model folder and prove its headers agree with its config.json."""
    if not folder.is_dir():
        raise ConvertError("is not a folder", folder)
    spec = load_arch(folder)
    ckpt = Checkpoint.open(folder)
    check_against(spec, ckpt)
    return Source(folder, ckpt, spec)


def settle_plan(source: Source, plan: PrunePlan, keep_reserved: bool = False) -> tuple[PrunePlan, Any]:
    """Validate the plan, then grow its keep set by the tokenizer's rules when it drops tokens.

    Returns the final plan (what the embedding keeps and prune_plan.json records) and the
    TokenizerRewrite, or None when every token is kept.
    """
    fingerprint = source.checkpoint.fingerprint() if plan.source_fingerprint else None
    plan.validate(source.spec, fingerprint)
    if plan.keeps_all_tokens(source.spec.dims.vocab):
        return plan, None
    if not (source.folder / "tokenizer.json").is_file():
        raise ConvertError("the plan drops tokens but the model has no tokenizer.json to rewrite; keep every token "
                           "or add the tokenizer", source.folder)
    from converter.tokenizer import plan_tokenizer

    rewrite = plan_tokenizer(source.folder, plan.kept_token_ids, vocab_size=source.spec.dims.vocab,
                             keep_reserved=keep_reserved)
    added = {k: v for k, v in rewrite.added_by_rules.items() if v}
    final = plan.with_tokens(rewrite.kept_ids, tokens_requested=len(plan.kept_token_ids), tokens_added_by_rules=added)
    final.validate(source.spec, fingerprint)
    return final, rewrite


def exporter_for(fmt: str) -> Callable[..., list[Path]]:
    try:
        module = importlib.import_module(EXPORTERS[fmt])
    except KeyError:
        raise ConvertError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORTERS)}") from None
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("exporters."):
            raise ConvertError(f"format {fmt!r} is not available in this version of compact-convert") from None
        raise ConvertError(f"format {fmt!r} needs the Python package '{exc.name}'; install it with pip") from None
    return module.export


def export(source: Source, plan: PrunePlan, out_dir: Path, fmt: str = "hf", options: ExportOptions | None = None,
           force: bool = False, keep_reserved: bool = False, report: ReportContext | None = None) -> list[Path]:
    """Prune `source` with `plan` and write format `fmt` to out_dir, atomically, with its report.

    `report` carries the scores the plan came from, for the report's coverage and importance plots.
    """
    from converter.report.write import ReportWriter

    options = options or ExportOptions()
    check_output_location(out_dir, source.folder, force)
    exporter = exporter_for(fmt)
    final, tokenizer = settle_plan(source, plan, keep_reserved)
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, final)
    try:
        with StagedOutput(out_dir, force=force) as staged:
            with ReportWriter(pruned, fmt, options, report, staged) as report_writer:
                written = exporter(pruned, tokenizer, staged, options)
                written += report_writer.finish()
    except OSError as exc:
        where = exc.filename or out_dir
        raise ConvertError(f"writing the output failed ({exc.strerror or exc}); nothing was written", where) from exc
    return [out_dir / p.relative_to(staged) for p in written]
