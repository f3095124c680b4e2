"""ONNX exporter: the pruned model as one decoder graph with a KV cache, for onnxruntime.

`export` writes `model.onnx` with its weights in `model.onnx.data`, inputs `input_ids`,
`attention_mask`, `position_ids`, `past_key_values.{i}.key/value` and outputs `logits`,
`present.{i}.key/value` (the names onnxruntime-genai and optimum use), dynamic batch and
sequence axes, opset 18; beside it the rewritten tokenizer, config.json, generation_config.json,
prune_plan.json and genai_config.json. A multimodal checkpoint (Gemma 3 4B and up) is exported as
its text model, with its text config as config.json (exporters.onnx.text_config) and a note on
stderr naming the towers left out. Everything that can be refused (family, RoPE variant,
out type, block size, missing packages) is refused before the first byte is written.

The pipeline: exporters.onnx.model builds the model with only the template layers loaded,
exporters.onnx.wrapper and .graph trace a prologue, one decoder layer per layer kind and an
epilogue, exporters.onnx.assemble repeats the templates for every layer and streams the weights,
exporters.onnx.precision converts to fp16/int8/int4 (honouring --int4-symmetric and
--int4-accuracy-level; --int4-lm-head other than int4 is refused there, before any work),
exporters.onnx.genai writes genai_config.json. A mixture-of-experts model's sparse blocks are traced as static
ops that run every expert on every token (exporters.onnx.experts).

Llama, Qwen2, Qwen3 and Gemma 1-3 decoders (exporters.onnx.fused.recipe says which exactly) skip all of that:
exporters.onnx.fused writes them by hand in onnxruntime's fused contrib ops, the layout
onnxruntime-genai's builder uses (no position_ids input; GroupQueryAttention's shared KV buffer),
quantizing each weight as it streams. The traced path above is the fallback for the others.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

import onnx  # noqa: F401  (a missing package is reported by name before any work)
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401

from converter.errors import ConvertError
from converter.progress import progress_bar
from converter.prune import PrunedCheckpoint
from exporters.companions import write_companions
from exporters.onnx.assemble import DATA_NAME, MODEL_NAME, assemble
from exporters.onnx.fused import FusedRecipe, recipe_for, write_fused, write_fused_genai_config
from exporters.onnx.genai import write_genai_config
from exporters.onnx.graph import template_layers, trace
from exporters.onnx.model import build_model, export_weights, hf_config
from exporters.onnx.precision import check_outtype, convert
from exporters.onnx.text_config import note_text_only, write_text_config
from exporters.onnx.wrapper import check_supported
from exporters.options import ExportOptions

if TYPE_CHECKING:
    from converter.tokenizer import TokenizerRewrite

__all__ = ["export", "check"]


def check(pruned: PrunedCheckpoint, options: ExportOptions) -> str:
    """Validate everything the export depends on; returns the out type. Raises ConvertError."""
    outtype = check_outtype(options.outtype, options.int4_block_size)
    check_supported(pruned.spec, pruned.source.folder / "config.json")
    head = options.int4_lm_head
    if head is not None and outtype != "int4":
        raise ConvertError(f"--int4-lm-head {head} sets the LM head under --outtype int4; this export's out type "
                           f"is {outtype}")
    if options.onnx_logits == "last" and _recipe(pruned, outtype, options) is None:
        raise ConvertError(f"--onnx-logits last is not available for {pruned.spec.family} (traced ONNX graph, "
                           f"{pruned.source.folder / 'config.json'}); its graph returns every position's logits")
    if head not in (None, "int4") and _recipe(pruned, outtype, options) is None:
        raise ConvertError(f"--int4-lm-head {head} is not available for {pruned.spec.family} (traced ONNX graph, "
                           f"{pruned.source.folder / 'config.json'}); its LM head is int4 like the other weights")
    return outtype


def _recipe(pruned: PrunedCheckpoint, outtype: str, options: ExportOptions) -> FusedRecipe | None:
    return recipe_for(pruned, outtype, options.int4_block_size, options.accuracy_level,
                      options.int4_symmetric is not False, options.int4_lm_head, options.ep,
                      options.onnx_logits == "last")


def export(pruned: PrunedCheckpoint, tokenizer: TokenizerRewrite | None, out_dir: Path,
           options: ExportOptions) -> list[Path]:
    """Write the ONNX decoder, its weights, tokenizer and configs for the pruned checkpoint into out_dir."""
    outtype = check(pruned, options)
    recipe = _recipe(pruned, outtype, options)
    if recipe is not None:
        return _export_fused(pruned, recipe, tokenizer, out_dir, options)
    family = pruned.spec.family_record
    note_text_only(pruned)
    with progress_bar(options.progress, total=4, desc="onnx", unit="step") as bar:
        bar.set_postfix_str("trace")
        built = build_model(pruned, template_layers(hf_config(pruned), family))
        traced = trace(built, family)
        bar.update()
        bar.set_postfix_str("write weights")
        graph = assemble(traced, built, export_weights(pruned, built), out_dir)
        del built, traced
        gc.collect()
        bar.update()
        bar.set_postfix_str(f"convert to {outtype}")
        convert(graph, outtype, options.int4_block_size, DATA_NAME, options.accuracy_level,
                options.int4_symmetric is True)
        bar.update()
        bar.set_postfix_str("tokenizer and configs")
        written = [graph, out_dir / DATA_NAME]
        written += write_companions(pruned, tokenizer, out_dir, write_config=False)
        written.append(write_text_config(pruned, out_dir))
        written.append(write_genai_config(pruned, out_dir, MODEL_NAME, options.ep))
        bar.update()
    return written


def _export_fused(pruned: PrunedCheckpoint, recipe: FusedRecipe, tokenizer: TokenizerRewrite | None, out_dir: Path,
                  options: ExportOptions) -> list[Path]:
    """The hand-written graph (exporters.onnx.fused) with its tokenizer and configs."""
    written = write_fused(pruned, recipe, out_dir, MODEL_NAME, DATA_NAME, options.progress, options.importance)
    written += write_companions(pruned, tokenizer, out_dir)
    written.append(write_fused_genai_config(pruned, out_dir, MODEL_NAME, options.ep))
    return written
