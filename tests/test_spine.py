"""The spine end to end on tiny random models of every family.

(a) the streamed rewrite equals pruning the loaded model in memory, bit for bit; (b) the output
loads with stock from_pretrained and its logits equal the in-memory pruned model's; (c) an
identity plan reproduces every tensor bit for bit. Single-file and sharded inputs both.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from converter.pipeline import export
from converter.source import open_source
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from tests.support.reference_prune import prune_state_dict, random_plan
from tests.support.tiny_models import FAMILIES, build_tiny_model, save_tiny_model


def load_folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def saved_state(model) -> dict[str, torch.Tensor]:
    """What save_pretrained stores: the state dict without the tied lm_head alias."""
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


CASES = [(family, sharded, dtype) for family in FAMILIES for sharded, dtype in
         ((False, torch.float32), (True, torch.bfloat16))]


@pytest.mark.parametrize("family,sharded,dtype", CASES, ids=[f"{f}-{'sharded' if s else 'single'}-{str(d)[6:]}"
                                                            for f, s, d in CASES])
def test_ffn_plan_streamed_equals_in_memory_and_logits_match(tmp_path: Path, family: str, sharded: bool,
                                                              dtype: torch.dtype) -> None:
    model = build_tiny_model(family, dtype=dtype)
    src = save_tiny_model(model, tmp_path / "in", max_shard_size="40KB" if sharded else "5GB")
    assert (src / "model.safetensors.index.json").exists() == sharded
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 96, seed=1)
    plan_path = plan.save(tmp_path / "plan.json")

    out = tmp_path / "out"
    export(open_source(src), PrunePlan.load(plan_path), out, "hf")

    expected = prune_state_dict(saved_state(model), plan)
    got = load_folder_tensors(out)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == dtype, name
        assert torch.equal(got[name], tensor), name

    written_cfg = json.loads((out / "config.json").read_text())
    assert written_cfg["intermediate_size"] == 96 and written_cfg["vocab_size"] == cfg.vocab_size
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_config(reloaded.config).to(torch.float32).eval()
    reference.load_state_dict({k: v.float() for k, v in expected.items()}, strict=False)
    if cfg.tie_word_embeddings:
        reference.tie_weights()
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_plan_reproduces_every_tensor(tmp_path: Path, family: str) -> None:
    model = build_tiny_model(family, dtype=torch.bfloat16, seed=4)
    src = save_tiny_model(model, tmp_path / "in", max_shard_size="30KB")
    source = open_source(src)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint())
    export(source, plan, tmp_path / "out", "hf", force=False)
    before, after = load_folder_tensors(src), load_folder_tensors(tmp_path / "out")
    assert set(before) == set(after)
    for name in before:
        assert before[name].dtype == after[name].dtype
        assert torch.equal(before[name].view(torch.int16), after[name].view(torch.int16)), name


def test_sharding_respects_max_shard_size(tmp_path: Path) -> None:
    from exporters.options import ExportOptions

    model = build_tiny_model("llama")
    src = save_tiny_model(model, tmp_path / "in")
    source = open_source(src)
    out = tmp_path / "out"
    export(source, PrunePlan.identity(source.spec), out, "hf", ExportOptions(max_shard_size=200_000, progress=False))
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    biggest = max(t.numel() * 4 for t in model.state_dict().values())
    for shard in shards:
        assert shard.stat().st_size <= max(200_000, biggest) + 10_000
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in load_folder_tensors(out).values())


VOCAB_CASES = [(family, sharded) for family in FAMILIES for sharded in (False, True)]


@pytest.mark.parametrize("family,sharded", VOCAB_CASES, ids=[f"{f}-{'sharded' if s else 'single'}"
                                                             for f, s in VOCAB_CASES])
def test_vocab_and_ffn_plan_with_tokenizer(tmp_path: Path, family: str, sharded: bool,
                                           byte_level_tokenizer_dir: Path) -> None:
    """Token-dropping plans: the tokenizer's rules grow the keep set, and both checks still hold."""
    model = build_tiny_model(family, dtype=torch.bfloat16 if sharded else torch.float32)
    src = save_tiny_model(model, tmp_path / "in", max_shard_size="40KB" if sharded else "5GB",
                          tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    requested = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 500, 96, seed=2)
    out = tmp_path / "out"
    export(open_source(src), requested, out, "hf")

    final = PrunePlan.load(out / "prune_plan.json")
    assert set(requested.kept_token_ids) <= set(final.kept_token_ids) and final.vocab_size > 500
    expected = prune_state_dict(saved_state(model), final)
    got = load_folder_tensors(out)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.vocab_size == final.vocab_size
    reference = AutoModelForCausalLM.from_config(reloaded.config).to(torch.float32).eval()
    reference.load_state_dict({k: v.float() for k, v in expected.items()}, strict=False)
    if cfg.tie_word_embeddings:
        reference.tie_weights()
    ids = torch.randint(0, final.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_vocab_only_pruning_equals_original_restricted_to_kept_rows(tmp_path: Path, family: str,
                                                                   byte_level_tokenizer_dir: Path) -> None:
    """Differential check against the unpruned model: same prompt in old and new ids, same logits."""
    model = build_tiny_model(family, seed=9)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    requested = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 700, 160, seed=4)
    export(open_source(src), requested, tmp_path / "out", "hf")
    kept = torch.tensor(PrunePlan.load(tmp_path / "out" / "prune_plan.json").kept_token_ids)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    new_ids = torch.randint(0, len(kept), (1, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(kept[new_ids]).logits[..., kept]
        torch.testing.assert_close(pruned(new_ids).logits, full, rtol=1e-5, atol=1e-5)


def test_every_row_copy_path_gives_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row-pruned tensors go one of three ways; each must write the in-memory reference's bytes.

    Long runs of kept rows are copied run by run by the kernel (or through a buffer where the file
    system refuses copy_file_range); short runs are read whole and gathered in memory. Tiny
    tensors always have short runs, so the threshold is moved to force each path.
    """
    import converter.prune

    model = build_tiny_model("llama", dtype=torch.bfloat16, seed=7)
    src = save_tiny_model(model, tmp_path / "in", max_shard_size="40KB")
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, None, 77, seed=8)
    outputs = {}
    for path, kernel, min_run in (("kernel", True, 0), ("buffered", False, 0), ("gathered", True, 1 << 60)):
        monkeypatch.setattr(converter.prune, "MIN_KERNEL_RUN_BYTES", min_run)
        source = open_source(src)
        source.checkpoint._kernel_copy = kernel
        row_pruned = [t for t in PrunedCheckpoint(source.checkpoint, source.spec, plan).planned()
                      if t.axis == 0 and t.keep is not None and not PrunedCheckpoint.is_passthrough(t)]
        assert row_pruned and all(PrunedCheckpoint.is_file_copy(t) == (path != "gathered") for t in row_pruned)
        export(source, plan, tmp_path / path, "hf")
        outputs[path] = {p.name: p.read_bytes() for p in sorted((tmp_path / path).iterdir())
                         if p.suffix == ".safetensors"}
    assert outputs["kernel"] == outputs["buffered"] == outputs["gathered"]
    expected = prune_state_dict(saved_state(model), plan)
    got = load_folder_tensors(tmp_path / "gathered")
    assert set(got) == set(expected) and all(torch.equal(got[name], tensor) for name, tensor in expected.items())


def test_a_loaded_plan_shares_one_int_per_channel_index_across_layers(tmp_path: Path) -> None:
    """Peak rewrite memory must not grow with depth: 80 layers listing channel 4000 hold one object."""
    channels = tuple(range(300, 5000))
    path = PrunePlan(tuple(range(1000, 3000)), tuple(channels for _ in range(8))).save(tmp_path / "plan.json")
    plan = PrunePlan.load(path)
    assert plan.kept_ffn_channels == tuple(channels for _ in range(8))
    first = plan.kept_ffn_channels[0]
    assert all(a is b for layer in plan.kept_ffn_channels[1:] for a, b in zip(first, layer))


@pytest.mark.parametrize("bad", [True, 2.0, "3", None])
@pytest.mark.parametrize("key", ["kept_token_ids", "kept_ffn_channels"])
def test_a_plan_listing_anything_but_integers_is_refused(key: str, bad: object) -> None:
    """JSON true, 2.0, "3" or null among the ids is refused, not read as 1, 2 or 3."""
    from converter.errors import ConvertError

    raw = {"format_version": 1, "kept_token_ids": [0, 1, 4], "kept_ffn_channels": [[0, 1], [0, 1]]}
    target = raw["kept_token_ids"] if key == "kept_token_ids" else raw["kept_ffn_channels"][1]  # type: ignore[index]
    target.append(bad)  # type: ignore[union-attr]
    with pytest.raises(ConvertError, match=r"kept_\w+(\[1\])? must be a list of integers"):
        PrunePlan.from_json(raw, "p.json")


def test_a_repeated_id_is_named_in_the_error(tmp_path: Path) -> None:
    from converter.arch import load_arch
    from converter.errors import ConvertError

    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "m")
    spec = load_arch(folder)
    channels = [0, 1, 2, 7, 7, 9]
    plan = PrunePlan.from_json({"format_version": 1, "kept_token_ids": [0, 1, 2],
                                "kept_ffn_channels": [channels] * spec.dims.layers}, "p.json")
    with pytest.raises(ConvertError, match=r"kept_ffn_channels\[0\] lists 7 twice"):
        plan.validate(spec, None)


def test_scattered_rows_read_in_place_across_iov_batches_and_short_reads(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept rows separated by gaps are read by preadv straight into their place; the reads are split
    at IOV_MAX pieces, and a read the kernel cuts short (even inside a row) resumes where it stopped."""
    import os

    import numpy as np
    from safetensors.numpy import save_file

    import converter.io.checkpoint as checkpoint
    from converter.io import Checkpoint
    from converter.io.buffers import BufferPool

    data = np.random.default_rng(3).integers(0, 1 << 16, size=(300, 24), dtype=np.uint16)
    save_file({"w": data}, str(tmp_path / "model.safetensors"))
    rows = np.sort(np.random.default_rng(4).choice(300, 170, replace=False))
    expected = data[rows].view(np.uint8).reshape(len(rows), -1)
    real = os.preadv
    calls: list[int] = []

    def short_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        assert len(buffers) <= 5
        want = sum(b.nbytes for b in buffers)
        return real(fd, buffers if want < 40 else _cut(buffers, want // 3 + 1), offset)

    monkeypatch.setattr(checkpoint, "IOV_MAX", 5)
    monkeypatch.setattr(os, "preadv", short_preadv)
    for pool in (None, BufferPool()):
        ckpt = Checkpoint.open(tmp_path)
        got = ckpt.raw_rows("w", rows, pool)
        np.testing.assert_array_equal(got, expected)
        ckpt.close()
    assert len(calls) > 20 and max(calls) == 5


def _cut(buffers: list[memoryview], nbytes: int) -> list[memoryview]:
    """The first `nbytes` of a list of buffers (a read that stops part way)."""
    out = []
    for b in buffers:
        if nbytes <= 0:
            break
        out.append(b[:nbytes])
        nbytes -= b.nbytes
    return out
