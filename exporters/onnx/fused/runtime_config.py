"""genai_config.json for the fused graph: the KV layout GroupQueryAttention expects.

Same document as the traced graph's (exporters.onnx.genai), with the two differences the fused
ops need, as onnxruntime-genai's builder writes them for CPU: no position_ids input (GQA derives
positions from the mask), and `past_present_share_buffer` true, so the runtime allocates each
layer's cache once at the maximum length and GQA writes new keys/values into it in place instead
of copying the whole past every step.
"""
from __future__ import annotations

from pathlib import Path

from converter.prune import PrunedCheckpoint
from exporters.companions import read_json, write_json
from exporters.onnx.genai import GENAI_NAME, genai_config


def write_fused_genai_config(pruned: PrunedCheckpoint, out_dir: Path, graph_name: str, ep: str = "cpu") -> Path:
    """Write genai_config.json for the fused graph from the remapped configs already in out_dir."""
    config = read_json(out_dir / "config.json") or dict(pruned.new_config())
    generation = read_json(out_dir / "generation_config.json") or {}
    document = genai_config(pruned, config, generation, graph_name, ep)
    del document["model"]["decoder"]["inputs"]["position_ids"]
    document["search"]["past_present_share_buffer"] = True
    return write_json(out_dir / GENAI_NAME, document)
