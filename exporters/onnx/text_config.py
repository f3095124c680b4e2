"""The config of the model the ONNX graph holds: the language model alone, for multimodal checkpoints.

A multimodal checkpoint (Gemma 3 4B/12B/27B) keeps its language model's config in a section of
config.json (`text_config`) under the multimodal model type. The ONNX exporter writes that language
model only, so it builds its transformers reference from the text config class named by the
multimodal config class (`sub_configs`, e.g. Gemma3TextConfig, model type gemma3_text), and writes
that same text config as the folder's config.json: the folder then describes exactly the decoder it
holds (a text-only config with a text architecture), not a vision model whose tower is missing. The
top level's token ids fill those the section leaves out. For every other family this is the pruned
checkpoint's config.json unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from converter.prune import PrunedCheckpoint
from exporters.companions import remap_ids, write_json

TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def text_model_config(pruned: PrunedCheckpoint) -> dict[str, Any]:
    """config.json of the model the graph holds (pruned sizes; token ids not yet remapped)."""
    raw = pruned.new_config()
    section = pruned.spec.family_record.text_config
    if section is None:
        return raw
    text_class = CONFIG_MAPPING[raw["model_type"]].sub_configs[section]
    values = dict(raw.get(section) or {})
    for key in TOKEN_KEYS:
        if values.get(key) is None and raw.get(key) is not None:
            values[key] = raw[key]
    values["model_type"] = text_class.model_type
    config = json.loads(text_class.from_dict(values).to_json_string(use_diff=False))  # JSON keys (id2label)
    config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text_class.model_type]]
    return config


def note_text_only(pruned: PrunedCheckpoint) -> None:
    """One line on stderr naming the towers of a multimodal checkpoint that the graph leaves out."""
    towers = [prefix.rstrip(".") for prefix in pruned.spec.family_record.passthrough]
    if towers:
        print(f"note: ONNX holds the text model only; the {' and '.join(towers)} tensors are not exported "
              "(config.json is the text model's)", file=sys.stderr)


def write_text_config(pruned: PrunedCheckpoint, out_dir: Path) -> Path:
    """config.json of the exported graph's model, its special token ids remapped into the pruned vocabulary."""
    keeps_all = pruned.plan.keeps_all_tokens(pruned.spec.dims.vocab)
    old_to_new = None if keeps_all else {old: new for new, old in enumerate(pruned.plan.kept_token_ids)}
    where = pruned.source.folder / "config.json"
    return write_json(out_dir / "config.json", remap_ids(text_model_config(pruned), old_to_new, where))
