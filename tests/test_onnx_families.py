"""ONNX export of tiny random models of every family, run in real onnxruntime.

Each family is pruned by a vocabulary + FFN plan and exported in fp32. The graph must reproduce
the pruned Hugging Face model (written by the HF exporter) on a batch of two prompts, one left
padded, through a 20-token prefill and 16 single-token steps with the cache: max |diff| at most
1e-4 of the logit scale. Mistral has a sliding window of 8, so those steps run with a past of 20
to 35 tokens, far beyond the window. Greedy decoding of 32 tokens with the cache must equal
transformers' generate, both in a plain onnxruntime loop and in onnxruntime-genai (which reads
genai_config.json; with a 24-token prompt Mistral runs past its window there too).
The file layout (names, axes, opset, one external data file, tied
embeddings stored once) is checked on the same exports.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from transformers import PreTrainedModel

from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan
from exporters.options import ExportOptions
from tests.support.onnx_runner import (
    cached_decode_error,
    OnnxDecoder,
    genai_greedy,
    greedy,
    hf_greedy,
    pruned_hf_model,
)
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

# Llama, Qwen2 and Qwen3 without a sliding window and Gemma 1-3 take the fused graph
# (tests/test_onnx_fused.py); these are the families the traced graph serves.
CASES: dict[str, dict[str, object]] = {
    "mistral": {"tied": False, "sliding_window": 8},
    "olmo2": {},
    # 4 layers; layers 0 and 3 without RoPE (transformers' default skips only 3, which is what
    # llama.cpp can express; the traced graph takes any pattern): two templates, the first no-RoPE.
    "smollm3": {"no_rope_layers": [0, 1, 1, 0]},
    "phi3": {},  # fused qkv/gate_up, partial rotary, LongRoPE (tiny_config): positions within the original 256
    "granite": {},  # the four multipliers of tiny_config: two in the layer trace, two in prologue/epilogue
}
# onnxruntime-genai has no 'olmo2' type; its 'olmo' runs the same plain decoder loop.
GENAI_TYPE = {"olmo2": "olmo"}
TOLERANCE = 1e-4
PREFILL, STEPS, PAD = 20, 16, 4


@dataclass(frozen=True)
class Exported:
    family: str
    onnx_dir: Path
    reference: PreTrainedModel
    plan: PrunePlan
    tied: bool


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, module_tmp: ModuleTmp,
             byte_level_tokenizer_dir: Path) -> Exported:
    family = request.param
    root = module_tmp.mktemp(f"onnx-{family}")
    overrides = dict(CASES[family])
    model = build_tiny_model(family, seed=0, tied=overrides.pop("tied", None), **overrides)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=1)
    written = export(open_source(src), plan, root / "onnx", "onnx", ExportOptions(outtype="fp32", progress=False))
    assert (root / "onnx" / "model.onnx") in written
    final = PrunePlan.load(root / "onnx" / "prune_plan.json")
    return Exported(family, root / "onnx", pruned_hf_model(src, plan, root / "hf"), final, cfg.tie_word_embeddings)


def _batch(vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(2, PREFILL + STEPS))
    mask = np.ones_like(ids)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    return ids, mask


def test_prefill_and_cached_steps_match_transformers(exported: Exported) -> None:
    cfg = exported.reference.config
    if exported.family == "mistral":
        assert cfg.sliding_window == 8 < PREFILL
    ids, mask = _batch(cfg.vocab_size, seed=5)
    error = cached_decode_error(exported.onnx_dir, exported.reference, ids, mask, PREFILL)
    print(f"\n{exported.family}: max |onnx - hf| / logit scale = {error:.2e}")
    assert error <= TOLERANCE


def test_greedy_32_tokens_equal_generate(exported: Exported) -> None:
    prompt = [1, *np.random.default_rng(7).integers(3, exported.reference.config.vocab_size, size=11).tolist()]
    assert greedy(OnnxDecoder(exported.onnx_dir), prompt, 32) == hf_greedy(exported.reference, prompt, 32)


def test_onnxruntime_genai_greedy_equals_generate(exported: Exported) -> None:
    """onnxruntime-genai drives the graph from genai_config.json (its own masks, positions and cache)."""
    prompt = [1, *np.random.default_rng(9).integers(3, exported.reference.config.vocab_size, size=23).tolist()]
    assert genai_greedy(exported.onnx_dir, prompt, 32) == hf_greedy(exported.reference, prompt, 32)


def test_graph_contract(exported: Exported) -> None:
    graph = onnx.load(exported.onnx_dir / "model.onnx", load_external_data=False)
    cfg = exported.reference.config
    layers = cfg.num_hidden_layers
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.graph.input, *graph.graph.output]}
    past = [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    present = [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    assert [v.name for v in graph.graph.input] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [v.name for v in graph.graph.output] == ["logits", *present]
    assert dims["input_ids"] == ["batch_size", "sequence_length"]
    assert dims["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert dims["logits"] == ["batch_size", "sequence_length", len(exported.plan.kept_token_ids)]
    assert dims[past[0]] == ["batch_size", cfg.num_key_value_heads, "past_sequence_length", cfg.head_dim]
    assert dims[present[-1]] == ["batch_size", cfg.num_key_value_heads, "total_sequence_length", cfg.head_dim]
    assert next(o.version for o in graph.opset_import if o.domain == "") >= 18
    # A layer reads a rotary table (beyond the trace's Shape guards) exactly when it applies RoPE.
    rotates = [bool(flag) for flag in getattr(cfg, "no_rope_layers", None) or [1] * layers]
    reads = [any(name.startswith("rope.") for node in graph.graph.node
                 if node.name.startswith(f"layers.{i}/") and node.op_type != "Shape" for name in node.input)
             for i in range(layers)]
    assert reads == rotates

    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    locations = {e.value for t in external for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    weights = {t.name: math.prod(t.dims) for t in external}
    params = {n: p.numel() for n, p in exported.reference.named_parameters()}
    assert sum(weights.values()) == sum(params.values())
    embed = exported.reference.get_input_embeddings().weight.shape
    shaped_like_embedding = [t for t in external if sorted(t.dims) == sorted(embed)]
    assert len(shaped_like_embedding) == (1 if exported.tied else 2)
    assert sum(weights.values()) * 4 <= (exported.onnx_dir / "model.onnx.data").stat().st_size


def test_genai_config_names_the_graph_and_pruned_ids(exported: Exported) -> None:
    genai = json.loads((exported.onnx_dir / "genai_config.json").read_text())
    config = json.loads((exported.onnx_dir / "config.json").read_text())
    decoder = genai["model"]["decoder"]
    assert genai["model"]["type"] == GENAI_TYPE.get(exported.family, config["model_type"])
    assert genai["model"]["vocab_size"] == len(exported.plan.kept_token_ids) == config["vocab_size"]
    assert genai["model"]["eos_token_id"] == config["eos_token_id"]
    assert decoder["filename"] == "model.onnx"
    assert decoder["num_hidden_layers"] == config["num_hidden_layers"]
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert genai["search"]["past_present_share_buffer"] is False
