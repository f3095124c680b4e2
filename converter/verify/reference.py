"""The pruned Hugging Face model every runtime is compared with, and where it comes from.

With `--reference IN` it is rebuilt from the source folder and OUT's prune_plan.json through the
same steps an export takes (open_source, settle_plan, the HF exporter; no report) into a temporary
folder that is removed afterwards: OUT's own files are never trusted to judge OUT. Without it, an hf OUT is its own
reference (tokenizer self-consistency only; its logits have nothing to be compared with) and a
GGUF or ONNX OUT offers only the tokenizer files it carries.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConvertError
from converter.verify.detect import Output

PLAN_NAME = "prune_plan.json"


@dataclass(frozen=True)
class Reference:
    """A folder with the reference tokenizer (and, when `has_model`, the pruned reference weights)."""

    folder: Path | None
    has_model: bool
    description: str
    source: Path | None = None


@contextmanager
def pruned_reference(out: Output, source: Path | None) -> Iterator[Reference]:
    """The reference for `out`; a temporary pruned export of `source` lives only inside the block."""
    if source is None:
        yield _without_source(out)
        return
    plan_path = out.folder / PLAN_NAME
    if not plan_path.is_file():
        raise ConvertError(f"is missing; --reference rebuilds the pruned model from IN and the {PLAN_NAME} every "
                           "export writes beside the model", plan_path)
    from converter.plan import PrunePlan
    from converter.prune import PrunedCheckpoint
    from converter.settle import settle_plan
    from converter.source import open_source
    from exporters.hf import export
    from exporters.options import ExportOptions
    from exporters.staging import StagedOutput

    opened = open_source(source)
    final, tokenizer = settle_plan(opened, PrunePlan.load(plan_path))
    scratch = Path(tempfile.mkdtemp(prefix="compact-convert-verify-"))
    try:
        folder = scratch / "reference"
        with StagedOutput(folder) as staged:
            export(PrunedCheckpoint(opened.checkpoint, opened.spec, final), tokenizer, staged,
                   ExportOptions(progress=False))
        yield Reference(folder, True, f"{source} pruned by {plan_path.name}", source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _without_source(out: Output) -> Reference:
    has_tokenizer = (out.folder / "tokenizer.json").is_file() or (out.folder / "tokenizer.model").is_file()
    if out.format == "hf":
        return Reference(out.folder, False, "OUT itself (no --reference)")
    if has_tokenizer:
        return Reference(out.folder, False, "the tokenizer files in OUT (no --reference)")
    return Reference(None, False, "none (no --reference, no tokenizer files in OUT)")
