"""genai_config.json: what onnxruntime-genai needs to drive the exported decoder.

The layout follows what onnxruntime-genai's own model builder writes (model.decoder with the
graph's input/output names, head and layer counts; search defaults). Special token ids are read
from the configs already written beside the graph, so they are the remapped, pruned ids. The
graph concatenates past and new key/values, so `past_present_share_buffer` is false, and it
applies sliding windows through its own masks, so no `sliding_window` block is written: the
runtime keeps the whole cache and the graph picks the window from it. A GPU execution provider
(--ep) is named in the decoder's `provider_options` with the options the builder writes for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.prune import PrunedCheckpoint
from exporters.companions import read_json, write_json

GENAI_NAME = "genai_config.json"
# generation_config.json keys onnxruntime-genai's search reads, with transformers' defaults.
SEARCH_KEYS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
DEFAULT_CONTEXT = 4096
# provider_options entries onnxruntime-genai's builder writes per execution provider (its defaults; cpu: none).
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "cuda": {"enable_cuda_graph": "0"},
    "dml": {"enable_graph_capture": "1"},
    "webgpu": {"enableGraphCapture": "0", "validationMode": "basic"},
}


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def genai_config(pruned: PrunedCheckpoint, config: dict[str, Any], generation: dict[str, Any],
                 graph_name: str, ep: str = "cpu") -> dict[str, Any]:
    """The genai_config.json object; `config` and `generation` are the pruned model's (remapped ids)."""
    dims = pruned.dims
    context = config.get("max_position_embeddings") or DEFAULT_CONTEXT
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    search = {key: default if generation.get(key) is None else generation[key] for key, default in SEARCH_KEYS.items()}
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": (
                    [{ep: dict(PROVIDER_OPTIONS[ep])}] if ep in PROVIDER_OPTIONS else [])},
                "filename": graph_name,
                "head_size": dims.head_dim,
                "hidden_size": dims.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": dims.heads,
                "num_hidden_layers": dims.layers,
                "num_key_value_heads": dims.kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else _first(eos),
            "type": pruned.spec.family_record.genai_model_type or pruned.spec.model_type,
            "vocab_size": dims.vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            **search,
        },
    }


def write_genai_config(pruned: PrunedCheckpoint, out_dir: Path, graph_name: str, ep: str = "cpu") -> Path:
    """Write genai_config.json from the (remapped) config.json and generation_config.json in out_dir."""
    config = read_json(out_dir / "config.json") or dict(pruned.new_config())
    generation = read_json(out_dir / "generation_config.json") or {}
    return write_json(out_dir / GENAI_NAME, genai_config(pruned, config, generation, graph_name, ep))
