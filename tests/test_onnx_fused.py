"""The fused ONNX graph (exporters/onnx/fused) for Llama, Qwen2, Qwen3 and Gemma 1-3, run in onnxruntime.

Tiny random models (untied Llama, Qwen2 with q/k/v biases, tied Qwen3 with per-head q/k norms,
Gemma with its (1 + w) norms, tanh GELU and scaled embedding, Gemma2 with sandwich norms,
attention and final soft-capping and a sliding window of 8 on every other layer, Gemma3 with
q/k norms and one rotary table for its sliding and one for its global layers) are pruned by a
vocabulary + FFN plan and exported in fp32 and int4, straight from the checkpoint. The graph must
be the builder's kind (GroupQueryAttention with fused rotary, SkipSimplifiedLayerNormalization,
MatMulNBits with accuracy_level 4, no position_ids) and, in
fp32, reproduce the pruned HF model through a 20-token prefill and 16 cached steps on a batch of
two (max |diff| at most 1e-4 of the logit scale) and greedy-decode the same 32 tokens as
transformers' generate, both in a plain onnxruntime loop and in onnxruntime-genai, which reads
the shared-buffer KV layout of genai_config.json. int4's top-1 agreement with fp32 is printed
(-s) and held to a floor; int8 (MatMulNBits, 8 bits) likewise; the block quantizer equals
onnxruntime's own; `compact-convert verify` passes on the fused output. The 20-token prefill and 16
steps run far past Gemma's window of 8. Mistral's config-wide window, Phi-3, OLMo-2, SmolLM3 and
Granite keep the traced graph (tests/test_onnx_families.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from transformers import PreTrainedModel

from converter.cli import main
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.source import open_source
from exporters.onnx.fused.quantize import BlockQuantized, dequantize_blocks, quantize_blocks
from exporters.onnx.fused.recipe import recipe_for
from exporters.options import ExportOptions
from tests.support.onnx_runner import (
    cached_decode_error,
    OnnxDecoder,
    genai_greedy,
    greedy,
    hf_greedy,
    max_rel_error,
    pruned_hf_model,
    teacher_forced,
)
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

# family: (tied, config overrides)
CASES: dict[str, tuple[bool, dict[str, object]]] = {
    "llama": (False, {}), "qwen2": (False, {}), "qwen3": (True, {}), "gemma": (True, {}),
    "gemma2": (True, {"query_pre_attn_scalar": 16}),
    "gemma3_text": (True, {"query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]}),
}
TOLERANCE = 1e-4
PREFILL, STEPS = 20, 16


@dataclass(frozen=True)
class Fused:
    family: str
    src: Path
    fp32: Path
    int4: Path
    reference: PreTrainedModel
    tied: bool


@pytest.fixture(scope="module", params=list(CASES))
def fused(request: pytest.FixtureRequest, module_tmp: ModuleTmp,
          byte_level_tokenizer_dir: Path) -> Fused:
    family, (tied, overrides) = request.param, CASES[request.param]
    root = module_tmp.mktemp(f"onnx-fused-{family}")
    model = build_tiny_model(family, seed=0, tied=tied, **overrides)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1500, 96, seed=1)
    for outtype in ("fp32", "int4"):
        export(open_source(src), plan, root / outtype, "onnx", ExportOptions(outtype=outtype, progress=False))
    return Fused(family, src, root / "fp32", root / "int4", pruned_hf_model(src, plan, root / "hf"), tied)


def _batch(vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(seed).integers(3, vocab, size=(2, PREFILL + STEPS))
    return ids, np.ones_like(ids)


def _ops(folder: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(folder / "model.onnx", load_external_data=False).graph.node)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_graph_is_the_builders_kind(fused: Fused) -> None:
    graph = onnx.load(fused.fp32 / "model.onnx", load_external_data=False).graph
    layers = fused.reference.config.num_hidden_layers
    past = [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    assert [v.name for v in graph.input] == ["input_ids", "attention_mask", *past]
    assert [v.name for v in graph.output] == ["logits", *(p.replace("past_key_values", "present") for p in past)]
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == layers
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers
    assert all(_attrs(n)["do_rotary"] == 1 for n in graph.node if n.op_type == "GroupQueryAttention")
    qk_norms = 2 * layers if fused.family in ("qwen3", "gemma3_text") else 0
    sandwich = 2 * layers if fused.family in ("gemma2", "gemma3_text") else 0
    assert ops.count("SimplifiedLayerNormalization") == 1 + qk_norms + sandwich
    gqa = [_attrs(n) for n in graph.node if n.op_type == "GroupQueryAttention"]
    cfg = fused.reference.config
    sliding = [t == "sliding_attention" for t in getattr(cfg, "layer_types", None) or [False] * layers]
    assert [a["local_window_size"] for a in gqa] == [cfg.sliding_window if s else -1 for s in sliding]
    assert [a["softcap"] for a in gqa] == [pytest.approx(getattr(cfg, "attn_logit_softcapping", None) or 0.0)] * layers
    assert ("FastGelu" in ops) == fused.family.startswith("gemma")
    int4 = _ops(fused.int4)
    assert not [n for n in int4 if n.op_type == "MatMul"]
    nbits = [_attrs(n) for n in int4 if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * layers + 1  # qkv, o, gate/up, down per layer; lm_head
    assert all(a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 4 for a in nbits)
    assert [n.op_type for n in int4].count("GatherBlockQuantized") == 1
    genai = json.loads((fused.fp32 / "genai_config.json").read_text())
    assert "position_ids" not in genai["model"]["decoder"]["inputs"]
    assert genai["search"]["past_present_share_buffer"] is True


def test_weights_stored_once(fused: Fused) -> None:
    graph = onnx.load(fused.fp32 / "model.onnx", load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    cfg = fused.reference.config
    params = sum(p.numel() for p in fused.reference.parameters())
    tables = 2 if fused.family == "gemma3_text" else 1  # local and global bases
    rotary = tables * 2 * cfg.max_position_embeddings * cfg.head_dim // 2
    assert sum(int(np.prod(t.dims)) for t in external) - rotary == params
    vocab_sized = [t.name for t in graph.initializer if cfg.vocab_size in t.dims]
    assert len(vocab_sized) == (1 if fused.tied else 2)
    int4 = onnx.load(fused.int4 / "model.onnx", load_external_data=False).graph
    assert not [t.name for t in int4.initializer if cfg.vocab_size in t.dims and t.data_type == onnx.TensorProto.FLOAT
                and len(t.dims) == 2 and cfg.hidden_size in t.dims]


def test_prefill_and_cached_steps_match_transformers(fused: Fused) -> None:
    ids, mask = _batch(fused.reference.config.vocab_size, seed=5)
    error = cached_decode_error(fused.fp32, fused.reference, ids, mask, PREFILL)
    print(f"\n{fused.family} fused fp32: max |onnx - hf| / logit scale = {error:.2e}")
    assert error <= TOLERANCE


def test_greedy_32_tokens_equal_generate(fused: Fused) -> None:
    prompt = [1, *np.random.default_rng(7).integers(3, fused.reference.config.vocab_size, size=11).tolist()]
    want = hf_greedy(fused.reference, prompt, 32)
    assert greedy(OnnxDecoder(fused.fp32), prompt, 32) == want
    assert genai_greedy(fused.fp32, prompt, 32) == want


def test_int4_tracks_fp32(fused: Fused) -> None:
    ids, mask = _batch(fused.reference.config.vocab_size, seed=6)
    want = teacher_forced(OnnxDecoder(fused.fp32), ids, mask, PREFILL)
    got = teacher_forced(OnnxDecoder(fused.int4), ids, mask, PREFILL)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    ratio = (fused.int4 / "model.onnx.data").stat().st_size / (fused.fp32 / "model.onnx.data").stat().st_size
    print(f"\n{fused.family} fused int4: top-1 agreement with fp32 {top1:.3f}, {ratio:.3f} of the fp32 data")
    # Random tiny weights sit close together, so 4-bit noise flips many top-1s (tied Gemma/Llama: about
    # 0.45-0.55, int8 0.9); a broken quantizer or layout lands at chance, 1/vocab.
    assert top1 >= 0.4
    prompt = [1, *np.random.default_rng(9).integers(3, fused.reference.config.vocab_size, size=23).tolist()]
    assert len(genai_greedy(fused.int4, prompt, 16)) == 16


def test_verify_passes_on_the_fused_output(fused: Fused, capsys: pytest.CaptureFixture[str]) -> None:
    """The runtime rows (verify's ONNX runtime feeds the graph without position_ids); the tokenizer row
    is the tokenizer's business (tests/test_verify.py), not the graph's."""
    main(["verify", str(fused.fp32), "--reference", str(fused.src), "--threads", "1"])
    out = capsys.readouterr().out
    print(out)
    for check in ("loads, vocabulary", "logit parity"):
        rows = [line for line in out.splitlines() if line.startswith(check + "  ")]
        assert len(rows) == 1 and rows[0].endswith("PASS"), out


def test_int8_is_matmulnbits_8_bits(tmp_path: Path, byte_level_tokenizer_dir: Path) -> None:
    model = build_tiny_model("llama", seed=3, tied=True)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=2)
    for outtype in ("fp32", "int8"):
        export(open_source(src), plan, tmp_path / outtype, "onnx", ExportOptions(outtype=outtype, progress=False))
    nbits = [_attrs(n) for n in _ops(tmp_path / "int8") if n.op_type == "MatMulNBits"]
    assert nbits and all(a["bits"] == 8 for a in nbits)
    ids, mask = _batch(cfg.vocab_size, seed=4)
    want = teacher_forced(OnnxDecoder(tmp_path / "fp32"), ids, mask, PREFILL)
    got = teacher_forced(OnnxDecoder(tmp_path / "int8"), ids, mask, PREFILL)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    error = max_rel_error(got, want, mask > 0)
    print(f"\ntiny llama fused int8: top-1 agreement with fp32 {top1:.3f}, rel {error:.3f}")
    assert top1 >= 0.8


@pytest.mark.parametrize("cols,block", [(96, 32), (80, 32), (64, 16)])
def test_block_quantizer_equals_onnxruntimes(cols: int, block: int) -> None:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    weight = np.random.default_rng(cols).standard_normal((40, cols)).astype(np.float32)
    blocks = -(-cols // block)
    packed = np.zeros((40, blocks, block // 2), np.uint8)
    scales = np.zeros(40 * blocks, np.float32)
    zeros = np.zeros(40 * ((blocks + 1) // 2), np.uint8)
    quantize_matmul_4bits(packed, np.ascontiguousarray(weight.T), scales, zeros, block, 40, cols, True)
    ours = quantize_blocks(weight, 4, block)
    np.testing.assert_array_equal(ours.scales.reshape(-1), scales)
    theirs = dequantize_blocks(type(ours)(packed, scales.reshape(40, blocks)), 4, cols)
    np.testing.assert_array_equal(dequantize_blocks(ours, 4, cols), theirs)  # padding codes differ: 0 vs 8
    error = np.abs(dequantize_blocks(ours, 4, cols) - weight).max(axis=1)
    assert (error <= np.abs(weight).max(axis=1) / 8 + 1e-6).all()


@pytest.mark.parametrize("bits,gain", [(4, 0.97), (8, 0.96)])
def test_searched_scales_lower_every_blocks_error(bits: int, gain: float) -> None:
    """The exporter's symmetric blocks take the least-squares scale of two candidates: no block's
    squared error above round-to-nearest's, the sum below it on heavy-tailed weights."""
    rng = np.random.default_rng(bits)
    weight = (rng.standard_t(4, (64, 96)) * 0.02).astype(np.float32)
    weight[0, :32] = 0  # an all-zero block stays exact
    weight[1, 32:64] = -0.5  # so does a constant one

    def block_errors(quantized: BlockQuantized) -> np.ndarray:
        got = dequantize_blocks(quantized, bits, 96)
        return ((got - weight) ** 2).reshape(64, 3, 32).sum(-1)

    plain, searched = quantize_blocks(weight, bits, 32), quantize_blocks(weight, bits, 32, search=True)
    assert (block_errors(searched) <= block_errors(plain) * (1 + 1e-5) + 1e-12).all()
    assert block_errors(searched)[0, 0] == 0 and block_errors(searched)[1, 1] < 1e-12
    assert block_errors(searched).sum() < gain * block_errors(plain).sum()
    assert searched.packed.shape == plain.packed.shape and searched.scales.dtype == np.float32


@pytest.mark.parametrize("bits", [4, 8])
def test_column_weights_steer_the_search(bits: int) -> None:
    """Weighted by column (the scores' input sums), each block's weighted squared error is at most the
    unweighted search's, clearly less in sum where a few columns carry the weight; all-equal weights
    change nothing."""
    rng = np.random.default_rng(10 + bits)
    weight = (rng.standard_t(4, (48, 64)) * 0.02).astype(np.float32)
    columns = np.where(rng.random(64) < 0.15, 50.0, 1.0).astype(np.float32)

    def weighted_errors(quantized: BlockQuantized) -> np.ndarray:
        got = dequantize_blocks(quantized, bits, 64)
        return (((got - weight) ** 2) * columns).reshape(48, 2, 32).sum(-1)

    plain = quantize_blocks(weight, bits, 32, search=True)
    steered = quantize_blocks(weight, bits, 32, search=True, columns=columns)
    assert (weighted_errors(steered) <= weighted_errors(plain) * (1 + 1e-5) + 1e-12).all()
    assert weighted_errors(steered).sum() < 0.97 * weighted_errors(plain).sum()
    flat = quantize_blocks(weight, bits, 32, search=True, columns=np.full(64, 3.0, np.float32))
    np.testing.assert_array_equal(flat.packed, plain.packed)
    np.testing.assert_allclose(flat.scales, plain.scales, rtol=1e-6)


@pytest.mark.parametrize("family,overrides,fused_path", [
    ("llama", {}, True),
    ("mistral", {"sliding_window": None}, True),
    ("mistral", {}, False),  # transformers' default window of 4096
    ("gemma", {}, True),
    ("gemma3_text", {"layer_types": ["sliding_attention", "full_attention"]}, True),
    ("gemma", {"hidden_act": "relu"}, False),
    ("olmo2", {}, False),
])
def test_which_models_take_the_fused_graph(tmp_path: Path, family: str, overrides: dict[str, object],
                                           fused_path: bool) -> None:
    source = open_source(save_tiny_model(build_tiny_model(family, vocab_size=300, **overrides), tmp_path / "in"))
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, PrunePlan.identity(source.spec))
    assert (recipe_for(pruned, "fp32", 32) is not None) == fused_path


def test_int4_block_wider_than_hidden_on_a_tied_model(tmp_path: Path, byte_level_tokenizer_dir: Path) -> None:
    """Block 128 pads hidden 64: the tied embedding lookup (GatherBlockQuantized) is sliced back to 64."""
    model = build_tiny_model("qwen3", seed=4, tied=True)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=3)
    export(open_source(src), plan, tmp_path / "fp32", "onnx", ExportOptions(outtype="fp32", progress=False))
    export(open_source(src), plan, tmp_path / "int4", "onnx",
           ExportOptions(outtype="int4", int4_block_size=128, progress=False))
    assert "Slice" in [n.op_type for n in _ops(tmp_path / "int4")]
    ids, mask = _batch(cfg.vocab_size, seed=8)
    want = teacher_forced(OnnxDecoder(tmp_path / "fp32"), ids, mask, PREFILL)
    got = teacher_forced(OnnxDecoder(tmp_path / "int4"), ids, mask, PREFILL)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"\ntiny qwen3 fused int4, block 128 over hidden 64: top-1 agreement with fp32 {top1:.3f}")
    assert top1 >= 0.4
