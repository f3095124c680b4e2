"""Mixture-of-experts models through the Hugging Face rewrite, on tiny random models of each family.

For Qwen3-MoE, Qwen2-MoE (with its shared expert), Mixtral and OLMoE, in both on-disk expert layouts
(one 2-D tensor per expert, as save_pretrained writes them, and transformers 5's stacked 3-D tensors):
a plan that cuts the vocabulary and every expert's channels differently streams to the same tensors as an
in-memory reference, stock transformers loads the result with the in-memory pruned model's logits, and
an identity plan copies every byte. Plans: version 1 files still load; unequal expert widths are refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from converter.errors import ConvertError
from converter.pipeline import export
from converter.plan import PrunePlan
from converter.source import open_source
from tests.support.moe_models import EXPERT_WIDTH, LAYOUTS
from tests.support.moe_models import moe_plan as _plan
from tests.support.moe_models import save_moe_model as _save
from tests.support.moe_models import tensors_of as _tensors
from tests.support.reference_moe import prune_moe_state_dict
from tests.support.tiny_models import MOE_FAMILIES, build_tiny_model, save_tiny_model

CASES = [(family, layout) for family in MOE_FAMILIES for layout in LAYOUTS]
IDS = [f"{f}-{layout}" for f, layout in CASES]


@pytest.mark.parametrize("family,layout", CASES, ids=IDS)
def test_expert_plan_streamed_equals_in_memory_and_logits_match(tmp_path: Path, family: str, layout: str,
                                                                byte_level_tokenizer_dir: Path) -> None:
    model = build_tiny_model(family, seed=3)
    src = _save(model, tmp_path / "in", layout, byte_level_tokenizer_dir)
    requested = _plan(model, 500, seed=5)
    assert len(set(requested.kept_expert_channels[0])) == model.config.num_experts  # every expert its own cut
    out = tmp_path / "out"
    export(open_source(src), requested, out, "hf")

    final = PrunePlan.load(out / "prune_plan.json")
    assert final.kept_expert_channels == requested.kept_expert_channels and final.vocab_size > 500
    expected = prune_moe_state_dict(_tensors(src), final)
    got = _tensors(out)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name

    written = json.loads((out / "config.json").read_text())
    width = EXPERT_WIDTH[family]
    assert written[width] == getattr(model.config, width) - 16 and written["vocab_size"] == final.vocab_size
    if family == "qwen2_moe":
        assert written["shared_expert_intermediate_size"] == model.config.shared_expert_intermediate_size // 2
    elif family == "qwen3_moe":  # the dense width it would give mlp_only_layers is not the experts'
        assert written["intermediate_size"] == model.config.intermediate_size

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_config(reloaded.config).eval()
    reference.load_state_dict(prune_moe_state_dict(dict(model.state_dict()), final), strict=True)
    ids = torch.randint(0, final.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family,layout", CASES, ids=IDS)
def test_identity_plan_reproduces_every_byte(tmp_path: Path, family: str, layout: str) -> None:
    model = build_tiny_model(family, seed=4, dtype=torch.bfloat16)
    src = _save(model, tmp_path / "in", layout)
    source = open_source(src)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint())
    assert plan.moe_intermediate_size == getattr(model.config, EXPERT_WIDTH[family])
    export(source, plan, tmp_path / "out", "hf")
    before, after = _tensors(src), _tensors(tmp_path / "out")
    assert set(before) == set(after)
    for name in before:
        assert torch.equal(before[name].view(torch.int16), after[name].view(torch.int16)), name


def test_an_old_version_1_plan_still_loads_for_a_dense_model(tmp_path: Path) -> None:
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "m")
    source = open_source(folder)
    channels = [[3, 1, 7], [0, 2, 9]]
    (tmp_path / "old.json").write_text(json.dumps({
        "format_version": 1, "vocab_size": 2000, "intermediate_size": 3, "kept_token_ids": list(range(2000)),
        "kept_ffn_channels": channels, "metadata": {"method": "hand"}}))
    plan = PrunePlan.load(tmp_path / "old.json")
    plan.validate(source.spec, None)
    assert plan.kept_ffn_channels == ((1, 3, 7), (0, 2, 9)) and plan.kept_expert_channels == ()
    assert plan.to_json()["format_version"] == 1 and "kept_expert_channels" not in plan.to_json()
    with pytest.raises(ConvertError, match="kept_expert_channels needs format_version 2"):
        PrunePlan.from_json({**plan.to_json(), "kept_expert_channels": [[[0]]]}, "p.json")


def test_an_expert_plan_round_trips_as_version_2(tmp_path: Path) -> None:
    model = build_tiny_model("qwen2_moe")
    plan = _plan(model, None, seed=1)
    saved = plan.save(tmp_path / "plan.json")
    raw = json.loads(saved.read_text())
    assert raw["format_version"] == 2 and raw["moe_intermediate_size"] == 32
    assert PrunePlan.load(saved) == plan


def test_unequal_expert_widths_are_refused_in_one_line(tmp_path: Path) -> None:
    model = build_tiny_model("qwen3_moe")
    source = open_source(_save(model, tmp_path / "m", "per_expert"))
    plan = _plan(model, None, seed=2)
    kept = [list(experts) for experts in plan.kept_expert_channels]
    kept[1][5] = kept[1][5][:-1]
    bad = PrunePlan(plan.kept_token_ids, (), kept_expert_channels=tuple(tuple(e) for e in kept))
    with pytest.raises(ConvertError, match=r"keeps 31 to 32 channels per expert; every expert") as caught:
        bad.validate(source.spec, None)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConvertError, match=r"kept_expert_channels\[1\] lists 3 experts"):
        PrunePlan(plan.kept_token_ids, (), kept_expert_channels=(kept[0], kept[1][:3])).validate(  # type: ignore[arg-type]
            source.spec, None)


def test_dense_mlp_layers_are_refused_in_one_line(tmp_path: Path) -> None:  # ONNX: tests/test_onnx_moe.py
    model = build_tiny_model("mixtral")
    source = open_source(_save(model, tmp_path / "m", "stacked"))
    config = json.loads((source.folder / "config.json").read_text())
    (source.folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_moe",
                                                           "architectures": ["Qwen3MoeForCausalLM"],
                                                           "moe_intermediate_size": 64, "mlp_only_layers": [1]}))
    with pytest.raises(ConvertError, match=r"mlp_only_layers \[1\] mixes dense MLP layers"):
        open_source(source.folder)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_record_agrees_with_transformers_in_memory_model(family: str) -> None:
    """The record's stacked tensors, shapes and sizes are those of the transformers class (which holds
    its experts stacked), the tied default is the config class's, and the config keys resolve."""
    from transformers import AutoConfig

    from converter.arch import resolve_arch

    model = build_tiny_model(family)
    cfg = model.config
    spec = resolve_arch(cfg.to_dict(), Path("config.json"))
    assert spec.family == family
    assert spec.family_record.tied_embeddings == AutoConfig.for_model(family).tie_word_embeddings
    dims = spec.dims
    assert (dims.experts, dims.moe_ffn) == (cfg.num_experts, getattr(cfg, EXPERT_WIDTH[family]))
    assert dims.ffn == getattr(cfg, "shared_expert_intermediate_size", 0)
    expected = {s.name: s.shape(dims) for s in spec.slots if s.layout in (None, "stacked")
                and (s.required or s.name in model.state_dict())}
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == expected


def test_a_checkpoint_mixing_or_missing_expert_tensors_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _save(build_tiny_model("qwen3_moe"), tmp_path / "m", "per_expert")
    tensors = _tensors(folder)
    save_file({**tensors, "model.layers.0.mlp.experts.down_proj": torch.zeros(8, 64, 48)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=r"'model.layers.0.mlp.experts.down_proj' is in another expert layout "
                                           r"than the checkpoint's other \(per-expert\)"):
        open_source(folder)
    del tensors["model.layers.1.mlp.experts.6.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=r"'model.layers.1.mlp.experts.6.up_proj.weight' \(Qwen3MoeForCausalLM, "
                                           r"per-expert layout\) is missing"):
        open_source(folder)


def test_a_stacked_expert_tensor_is_cut_one_expert_at_a_time(tmp_path: Path) -> None:
    """Writing a cut stack holds a few experts' slabs, not the stack (8 slabs): the cut being written, and the
    next expert's source slab and cut, read ahead so that reads overlap writes (measured 2.93-2.99 slabs)."""
    import os
    import tracemalloc

    from converter.prune import PrunedCheckpoint

    model = build_tiny_model("olmoe", intermediate_size=256, hidden_size=128, head_dim=32, num_experts=8)
    source = open_source(_save(model, tmp_path / "m", "stacked"))
    plan = _plan(model, None, seed=6)
    pruned = PrunedCheckpoint(source.checkpoint, source.spec, plan)
    stacks = [t for t in pruned.planned() if t.experts_keep is not None]
    assert len(stacks) == 4 and all(pruned.is_file_copy(t) for t in stacks)
    expected = prune_moe_state_dict(_tensors(source.folder), plan)
    for planned in stacks:
        with open(tmp_path / "t.bin", "wb") as f:
            tracemalloc.start()
            pruned.copy_source(planned, f.fileno())
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        slab = planned.source.nbytes // 8
        assert peak < 3.2 * slab, (planned.name, peak, slab)  # 2.2 before the read-ahead (one cut in flight)
        written = torch.frombuffer(bytearray((tmp_path / "t.bin").read_bytes()), dtype=torch.float32)
        assert torch.equal(written.view(planned.shape), expected[planned.name]), planned.name
        assert os.path.getsize(tmp_path / "t.bin") == planned.nbytes
