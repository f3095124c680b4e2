"""ONNX export of pruned mixture-of-experts models, run in real onnxruntime and onnxruntime-genai.

Tiny random Qwen3-MoE (renormalised top-k weights, stacked experts), Qwen2-MoE (shared expert with its sigmoid
gate, per-expert tensors), Mixtral (always renormalised, stacked) and OLMoE (q/k norms, per-expert) are pruned
by a plan that cuts the vocabulary, every expert its own way and the shared expert, and exported in fp32. As for
the dense families (tests/test_onnx_families.py): a 20-token prefill and 16 cached steps on a batch of two, one
left padded, within 1e-4 of the logit scale of the pruned transformers model; greedy 32 tokens equal generate,
in a plain onnxruntime loop and in onnxruntime-genai. Each expert's initializers must hold exactly the pruned
model's expert weights (the stacked tensors are cut and split into gate and up one expert at a time), the graph
has no control flow and one TopK per layer, and `compact-convert verify` passes on the OLMoE export.

Why plain ops and not onnxruntime's contrib `MoE` (exporters.onnx.experts): in onnxruntime 1.32 its CPU kernel
refuses a separate up projection ('FC3 is not implemented for CPU MoE') and non-interleaved SwiGLU; with gate
and up interleaved (swiglu_fusion=1, alpha 1, beta 0) it matches transformers (2e-7 relative on
hidden 64 / 8 experts) and ran 1.5x faster than the dense graph at 64 tokens and 7-10x at one token (hidden
512-1024, 32-64 experts, 1 thread), but it is float only, so fp16/int8/int4 would need a second path (QMoE),
where the dense graph's per-expert MatMuls go through the existing converters and quantizers unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import PreTrainedModel

from converter.cli import main
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.source import open_source
from exporters.options import ExportOptions
from tests.support.moe_models import EXPERT_WIDTH, moe_plan, save_moe_model
from tests.support.onnx_runner import OnnxDecoder, cached_decode_error, genai_greedy, greedy, hf_greedy, pruned_hf_model
from tests.support.tiny_models import build_tiny_model

# family -> (on-disk expert layout, config overrides)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3_moe": ("stacked", {"norm_topk_prob": True}),
    "qwen2_moe": ("per_expert", {}),
    "mixtral": ("stacked", {}),
    "olmoe": ("per_expert", {}),
}
GENAI_TYPE = {"qwen3_moe": "qwen3", "qwen2_moe": "qwen2", "mixtral": "mistral", "olmoe": "olmo"}
TOLERANCE = 1e-4  # the dense families' bound (tests/test_onnx_families.py)
PREFILL, STEPS, PAD = 20, 16, 4


@dataclass(frozen=True)
class Exported:
    family: str
    source: Path
    onnx_dir: Path
    reference: PreTrainedModel
    plan: PrunePlan


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             byte_level_tokenizer_dir: Path) -> Exported:
    family = request.param
    layout, overrides = CASES[family]
    root = tmp_path_factory.mktemp(f"onnx-moe-{family}")
    model = build_tiny_model(family, seed=0, **overrides)
    src = save_moe_model(model, root / "in", layout, byte_level_tokenizer_dir)
    plan = moe_plan(model, 1500, seed=1)
    export(open_source(src), plan, root / "onnx", "onnx", ExportOptions(outtype="fp32", progress=False))
    reference = pruned_hf_model(src, plan, root / "hf")
    return Exported(family, src, root / "onnx", reference, PrunePlan.load(root / "onnx" / "prune_plan.json"))


def test_prefill_and_cached_steps_match_transformers(exported: Exported) -> None:
    cfg = exported.reference.config
    width = getattr(cfg, EXPERT_WIDTH[exported.family])
    assert width == len(exported.plan.kept_expert_channels[0][0]) < 64  # the experts really are cut
    rng = np.random.default_rng(5)
    ids = rng.integers(3, cfg.vocab_size, size=(2, PREFILL + STEPS))
    mask = np.ones_like(ids)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    error = cached_decode_error(exported.onnx_dir, exported.reference, ids, mask, PREFILL)
    print(f"\n[onnx moe] {exported.family}: max |onnx - hf| / logit scale = {error:.2e}")
    assert error <= TOLERANCE


def test_greedy_32_equal_in_onnxruntime_and_genai(exported: Exported) -> None:
    vocab = exported.reference.config.vocab_size
    prompt = [1, *np.random.default_rng(7).integers(3, vocab, size=11).tolist()]
    expected = hf_greedy(exported.reference, prompt, 32)
    assert greedy(OnnxDecoder(exported.onnx_dir), prompt, 32) == expected
    assert genai_greedy(exported.onnx_dir, prompt, 32) == expected


def test_expert_initializers_hold_the_pruned_experts(exported: Exported) -> None:
    graph = onnx.load(exported.onnx_dir / "model.onnx", load_external_data=False)
    external = {t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    onnx.load_external_data_for_model(graph, str(exported.onnx_dir))
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if t.name in external}
    cfg = exported.reference.config
    assert [n.op_type for n in graph.graph.node].count("TopK") == cfg.num_hidden_layers
    assert not {"Loop", "If", "Scan"} & {n.op_type for n in graph.graph.node}
    params = {n: p.detach().numpy() for n, p in exported.reference.named_parameters()}
    assert sum(w.size for w in weights.values()) == sum(p.size for p in params.values())
    for layer in range(cfg.num_hidden_layers):
        mlp = f"model.layers.{layer}.mlp"
        stacked_gate_up, stacked_down = params[f"{mlp}.experts.gate_up_proj"], params[f"{mlp}.experts.down_proj"]
        width = stacked_down.shape[2]
        np.testing.assert_array_equal(weights[f"{mlp}.gate.weight_t"], params[f"{mlp}.gate.weight"].T)
        for e in range(stacked_gate_up.shape[0]):
            expert = f"{mlp}.experts.{e}"
            np.testing.assert_array_equal(weights[f"{expert}.gate_proj.weight_t"], stacked_gate_up[e, :width].T)
            np.testing.assert_array_equal(weights[f"{expert}.up_proj.weight_t"], stacked_gate_up[e, width:].T)
            np.testing.assert_array_equal(weights[f"{expert}.down_proj.weight_t"], stacked_down[e].T)
        if exported.family == "qwen2_moe":
            np.testing.assert_array_equal(weights[f"{mlp}.shared_expert.down_proj.weight_t"],
                                          params[f"{mlp}.shared_expert.down_proj.weight"].T)


def test_genai_config_and_verify(exported: Exported) -> None:
    genai = json.loads((exported.onnx_dir / "genai_config.json").read_text())
    assert genai["model"]["type"] == GENAI_TYPE[exported.family]  # onnxruntime-genai refuses the MoE model types
    assert genai["model"]["vocab_size"] == len(exported.plan.kept_token_ids)
    if exported.family == "olmoe":  # `compact-convert verify` rebuilds the pruned reference itself
        assert main(["verify", str(exported.onnx_dir), "--reference", str(exported.source), "--threads", "1",
                     "--retention-prompts", "0"]) == 0
