"""SmolLM3's layers without RoPE, checked where a mistake would hide.

The family tests run the tiny SmolLM3 (4 layers) with transformers' default pattern (the last
layer without RoPE) in test_spine and test_gguf_tiny, and with layers 0 and 3 without RoPE in
test_onnx_families (whose graph contract checks that exactly the rotating layers read a rotary
table). Here: that the pattern matters (rotating the no-RoPE layer moves the logits by over 10x
the ONNX and 50x the GGUF tolerance, so those tests would catch it); the pattern read from the
config; that the fused ONNX graph is never chosen; and that the GGUF exporter, whose llama.cpp
graph hard-codes every fourth layer, refuses any other pattern, and both exporters refuse a
malformed one, in one line naming config.json.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from converter.arch import resolve_arch
from converter.arch.rotary_layers import rotary_layers
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from converter.source import open_source
from exporters.gguf.hparams import hyperparameters
from exporters.onnx.fused import recipe_for
from tests.support.refusal import Case, assert_refused, edit_json
from tests.support.tiny_models import build_tiny_model, save_tiny_model

# The looser of the family tests' tolerances (GGUF f32 2e-5, ONNX fp32 1e-4 of the logit scale).
TOLERANCE = 1e-4
PATTERN = [0, 1, 0, 1]  # not llama.cpp's every-fourth-layer pattern


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_no_rope_layer_changes_the_logits() -> None:
    model = build_tiny_model("smollm3")
    assert model.config.no_rope_layers == [1, 1, 1, 0]
    rotating = build_tiny_model("smollm3", no_rope_layers=[1, 1, 1, 1])  # same seed, same weights
    ids = torch.randint(3, model.config.vocab_size, (1, 36), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        change = _relative(rotating(ids).logits, model(ids).logits)
    print(f"\nsmollm3: rope on the no-RoPE layer moves the logits by {change:.2e} of their scale")
    # Measured 3.5e-3 to 5.6e-3 over three prompts (random tiny weights attend almost uniformly).
    assert change > 10 * TOLERANCE


def test_rotary_layers_read_the_config() -> None:
    smol = build_tiny_model("smollm3", no_rope_layer_interval=2).config.to_dict()
    record = resolve_arch(smol, Path("config.json")).family_record
    assert rotary_layers(smol, record, 4, Path("config.json")) == (True, False, True, False)
    without_list = {k: v for k, v in smol.items() if k != "no_rope_layers"}
    assert rotary_layers(without_list, record, 6, Path("config.json")) == (True, False) * 3
    llama = resolve_arch(build_tiny_model("llama").config.to_dict(), Path("config.json")).family_record
    assert rotary_layers({"no_rope_layers": [0, 0]}, llama, 2, Path("config.json")) == (True, True)


def test_fused_graph_is_not_chosen(tmp_path: Path) -> None:
    source = open_source(save_tiny_model(build_tiny_model("smollm3", vocab_size=300), tmp_path / "in"))
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, PrunePlan.identity(source.spec))
    assert recipe_for(pruned, "fp32", 32) is None


def test_gguf_accepts_llama_cpps_own_pattern_on_more_layers(tmp_path: Path) -> None:
    """llama.cpp skips RoPE where (layer + 1) % 4 == 0 at any depth; 8 layers: 3 and 7, as transformers."""
    model = build_tiny_model("smollm3", vocab_size=300, num_hidden_layers=8)
    assert model.config.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
    source = open_source(save_tiny_model(model, tmp_path / "in"))
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, PrunePlan.identity(source.spec))
    keys = {kv.key: kv.value for kv in hyperparameters(pruned)}
    assert keys["smollm3.block_count"] == 8 and not any("rope" in k and "layer" in k for k in keys)


def _set(key: str, value: object):
    return lambda model, plan: edit_json(model / "config.json", lambda c: c.update({key: value}))


REFUSALS = [
    Case("gguf-other-pattern", _set("no_rope_layers", PATTERN), "layers 0, 2 skip RoPE", "config.json",
         ("--format", "gguf")),
    Case("gguf-no-rope-anywhere", _set("no_rope_layers", [0, 0, 0, 0]), "layers 0, 1, 2, 3 skip", "config.json",
         ("--format", "gguf")),
    Case("gguf-malformed", _set("no_rope_layers", [1, 1, 0]), "'no_rope_layers' must list", "config.json",
         ("--format", "gguf")),
    Case("onnx-malformed", _set("no_rope_layers", [1, 2, 1, 0]), "'no_rope_layers' must list", "config.json",
         ("--format", "onnx")),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_unexpressible_patterns_are_refused(case: Case, tmp_path: Path, byte_level_tokenizer_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_model("smollm3", vocab_size=2000)
    folder = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    source = open_source(folder)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint()).save(tmp_path / "plan.json")
    assert_refused(case, folder, plan, tmp_path, capsys)
