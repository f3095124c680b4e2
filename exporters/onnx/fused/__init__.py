"""The fused ONNX decoder: a hand-written graph in onnxruntime's contrib ops, weights streamed.

For the families `recipe.recipe_for` accepts (Llama, Qwen2, Qwen3 without sliding windows, Gemma 1-3) the
exporter writes the graph onnxruntime-genai's own model builder would (GroupQueryAttention with
fused rotary embedding and a packed QKV projection, SkipSimplifiedLayerNormalization,
MatMulNBits), which decodes about twice as fast on CPU as the traced graph. Weights go straight
from the PrunedCheckpoint into model.onnx.data, quantized as they stream (weights.py), so the
export never holds the model: not in fp32, not while quantizing. Families outside the recipe
keep the traced path (exporters.onnx.__init__); moving one here means widening the recipe and
the graph, nothing else.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from converter.progress import progress_bar
from converter.prune import PrunedCheckpoint
from exporters.onnx.external import ExternalData
from exporters.onnx.fused.graph import build_graph
from exporters.onnx.fused.recipe import FusedRecipe, recipe_for
from exporters.onnx.fused.rotary import rotary_tables
from exporters.onnx.fused.runtime_config import write_fused_genai_config
from exporters.onnx.fused.weights import jobs, write_weights

if TYPE_CHECKING:
    from converter.score.matmul_inputs import MatmulSums

__all__ = ["FusedRecipe", "recipe_for", "write_fused", "write_fused_genai_config"]

PRODUCER = "compact-convert"


def write_fused(pruned: PrunedCheckpoint, recipe: FusedRecipe, out_dir: Path, graph_name: str, data_name: str,
                progress: bool, importance: MatmulSums | None = None) -> list[Path]:
    """Write graph_name and data_name into out_dir; returns both paths. genai_config.json is written
    by `write_fused_genai_config` once the companions (config.json) are in place. `importance`: the
    scores' matmul input sums, which weigh the quantizer's columns."""
    tables = rotary_tables(pruned, recipe.context, recipe.dims.head_dim, recipe.rope_tables)
    all_jobs = jobs(recipe, tables)
    with ExternalData(out_dir / data_name) as data, \
            progress_bar(progress, total=len(all_jobs), desc="onnx weights", unit="tensor") as bar:
        initializers = []
        for written in write_weights(pruned, recipe, all_jobs, data, importance):
            initializers += written
            bar.update()
    model = build_graph(recipe, initializers, PRODUCER)
    path = out_dir / graph_name
    onnx.save_model(model, path)
    return [path, out_dir / data_name]

