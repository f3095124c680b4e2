"""Catalogue of bad inputs: each must fail with exit 2, one line naming the file, nothing written.

Every case starts from a valid tiny model folder and a valid plan, breaks one thing, and runs the
real CLI entry point in-process. Add a case here for every new error the tool handles; hostile
tokenizer files have their own catalogue, test_bad_tokenizer.py.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from converter.cli import main
from converter.source import open_source
from converter.plan import PrunePlan
from tests.support.refusal import Breaker, Case, assert_refused, edit_json, run_cli
from tests.support.tiny_models import build_tiny_model, save_tiny_model


def _first_shard(model: Path) -> Path:
    return sorted(model.glob("*.safetensors"))[0]


def _rewrite_header(path: Path, edit: Callable[[dict], None]) -> None:
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + blob[8 + n:])


def _edit_index(model: Path, edit: Callable[[dict], None]) -> None:
    edit_json(model / "model.safetensors.index.json", edit)


def _edit_plan(edit: Callable[[dict], None]) -> Breaker:
    return lambda model, plan: edit_json(plan, edit)


def _set_config(**values: object) -> Breaker:
    return lambda model, plan: edit_json(model / "config.json", lambda c: c.update(values))


def _point_first_tensor_at(target: str) -> Breaker:
    def brk(model: Path, plan: Path) -> None:
        def edit(index: dict) -> None:
            first = sorted(index["weight_map"])[0]
            index["weight_map"][first] = target
        _edit_index(model, edit)
    return brk


def _symlink_escape(model: Path, plan: Path) -> None:
    outside = model.parent / "elsewhere.safetensors"
    shard = _first_shard(model)
    shard.rename(outside)
    shard.symlink_to(outside)


def _config_symlink_escape(model: Path, plan: Path) -> None:
    outside = model.parent / "elsewhere-config.json"
    (model / "config.json").rename(outside)
    (model / "config.json").symlink_to(outside)


def _symlink_loop(model: Path, plan: Path) -> None:
    shard = _first_shard(model)
    shard.unlink()
    shard.symlink_to(shard.name)


def _stale_single_file(model: Path, plan: Path) -> None:
    """A model.safetensors beside the shards that the index does not list (e.g. left by an older upload)."""
    (model / "model.safetensors").write_bytes(_first_shard(model).read_bytes())


def _duplicate_across_shards(model: Path, plan: Path) -> None:
    shards = sorted(model.glob("model-*.safetensors"))
    victim = json.loads(shards[0].read_bytes()[8:8 + struct.unpack("<Q", shards[0].read_bytes()[:8])[0]])
    name = next(k for k in victim if k != "__metadata__")
    def edit(header: dict) -> None:
        entry = dict(victim[name])
        data_end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        entry["data_offsets"] = [data_end, data_end + size]
        header[name] = entry
    _rewrite_header(shards[1], edit)
    with shards[1].open("ab") as f:
        f.write(b"\0" * (victim[name]["data_offsets"][1] - victim[name]["data_offsets"][0]))


def _pickle_only(model: Path, plan: Path) -> None:
    for f in model.glob("*.safetensors*"):
        f.unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _truncate(model: Path, plan: Path) -> None:
    shard = _first_shard(model)
    shard.write_bytes(shard.read_bytes()[:-100])


def _busiest_shard(model: Path) -> Path:
    def count(path: Path) -> int:
        blob = path.read_bytes()
        return len(json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]]))
    return max(sorted(model.glob("*.safetensors")), key=count)


def _first_entry(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


def _overlap(header: dict) -> None:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]


def _drop_tensor(name: str) -> Breaker:
    def brk(model: Path, plan: Path) -> None:
        from safetensors.numpy import load_file, save_file

        for shard in model.glob("*.safetensors"):
            tensors = load_file(shard)
            if tensors.pop(name, None) is not None:
                save_file(tensors, shard, metadata={"format": "pt"})
        _edit_index(model, lambda i: i["weight_map"].pop(name, None))
    return brk


def _add_foreign_tensor(model: Path, plan: Path) -> None:
    shard = _first_shard(model)
    def edit(header: dict) -> None:
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        header["model.vision_tower.weight"] = {"dtype": "F32", "shape": [2], "data_offsets": [end, end + 8]}
    _rewrite_header(shard, edit)
    with shard.open("ab") as f:
        f.write(b"\0" * 8)
    _edit_index(model, lambda i: i["weight_map"].__setitem__("model.vision_tower.weight", shard.name))


CASES = [
    Case("config-missing", lambda m, p: (m / "config.json").unlink(), "config.json", "config.json"),
    Case("config-not-json", lambda m, p: (m / "config.json").write_text("{oops"), "cannot be parsed", "config.json"),
    Case("config-not-object", lambda m, p: (m / "config.json").write_text("[1, 2]"), "not a JSON object",
         "config.json"),
    Case("unsupported-architecture", _set_config(architectures=["BertForMaskedLM"], model_type="bert"),
         "is not supported; supported:", "config.json"),
    Case("config-negative-size", _set_config(hidden_size=-64), "hidden_size", "config.json"),
    Case("config-string-size", _set_config(num_hidden_layers="2"), "num_hidden_layers", "config.json"),
    Case("config-billions-of-layers", _set_config(num_hidden_layers=2_000_000_000), "num_hidden_layers",
         "config.json"),
    Case("config-shape-mismatch", _set_config(intermediate_size=128), "config.json implies", "safetensors"),
    Case("no-safetensors", lambda m, p: [f.unlink() for f in m.glob("*.safetensors*")], "no .safetensors", "in"),
    Case("pickle-only", _pickle_only, "never unpickles", "in"),
    Case("header-truncated", lambda m, p: _first_shard(m).write_bytes(b"\x10\x00"), "truncated", "safetensors"),
    Case("header-absurd-length", lambda m, p: _first_shard(m).write_bytes(struct.pack("<Q", 2**60) + b"{}"),
         "header claims", "safetensors"),
    Case("header-not-json", lambda m, p: _first_shard(m).write_bytes(struct.pack("<Q", 4) + b"{{{{"),
         "not valid JSON", "safetensors"),
    Case("data-truncated", _truncate, "safetensors", "safetensors"),
    Case("unknown-dtype", lambda m, p: _rewrite_header(_first_shard(m), lambda h: h[next(
        k for k in h if k != "__metadata__")].update(dtype="F42")), "unknown dtype", "safetensors"),
    Case("index-parent-escape", _point_first_tensor_at("../x.safetensors"), "outside the model folder",
         "model.safetensors.index.json"),
    Case("index-absolute-path", _point_first_tensor_at("/etc/passwd.safetensors"), "outside the model folder",
         "model.safetensors.index.json"),
    Case("shard-symlink-escape", _symlink_escape, "outside the model folder", "model-00001-of-"),
    Case("config-symlink-escape", _config_symlink_escape, "outside the model folder", "config.json"),
    Case("shard-symlink-loop", _symlink_loop, "symlink loop", "model-00001-of-"),
    Case("single-file-beside-index", _stale_single_file, "ambiguous", "model.safetensors.index.json"),
    Case("index-missing-shard", _point_first_tensor_at("model-00099-of-00099.safetensors"), "does not exist",
         "model.safetensors.index.json"),
    Case("index-not-safetensors", _point_first_tensor_at("model.bin"), "not a .safetensors file",
         "model.safetensors.index.json"),
    Case("tensor-listed-twice", _duplicate_across_shards, "stored twice", "safetensors"),
    Case("header-offsets-overlap", lambda m, p: _rewrite_header(_busiest_shard(m), _overlap), "overlap", "safetensors"),
    Case("header-offsets-gap", lambda m, p: _rewrite_header(_first_shard(m), lambda h: [
        v["data_offsets"].__setitem__(i, v["data_offsets"][i] + 4) for k, v in h.items() if k != "__metadata__"
        for i in (0, 1)]), "safetensors", "safetensors"),
    Case("header-shape-overflow", lambda m, p: _rewrite_header(_first_shard(m), lambda h: _first_entry(h).update(
        shape=[2**40, 2**40, 2**40])), "shape", "safetensors"),
    Case("header-not-object", lambda m, p: _first_shard(m).write_bytes(struct.pack("<Q", 8) + b"[1,2,3] "),
         "not a JSON object", "safetensors"),
    Case("header-bad-metadata", lambda m, p: _rewrite_header(_first_shard(m), lambda h: h.update(
        __metadata__={"format": 1})), "__metadata__", "safetensors"),
    Case("header-metadata-not-object", lambda m, p: _rewrite_header(_first_shard(m), lambda h: h.update(
        __metadata__=["format", "pt"])), "__metadata__ must map strings to strings but is a JSON array",
         "model-00001-of-"),
    Case("config-dtype-contradicts-weights", _set_config(dtype="float16"), "silently cast", "config.json"),
    Case("config-torch-dtype-contradicts-weights", _set_config(dtype=None, torch_dtype="bfloat16"),
         "torch_dtype 'bfloat16' but the weights are stored as F32", "config.json"),
    Case("index-not-json", lambda m, p: (m / "model.safetensors.index.json").write_text("{"), "cannot be parsed",
         "model.safetensors.index.json"),
    Case("index-without-weight-map", lambda m, p: (m / "model.safetensors.index.json").write_text("{}"),
         "weight_map", "model.safetensors.index.json"),
    Case("index-lists-tensor-not-in-shard", lambda m, p: _edit_index(m, lambda i: i["weight_map"].__setitem__(
        "model.extra.weight", sorted(i["weight_map"].values())[0])), "does not contain it",
         "model.safetensors.index.json"),
    Case("config-zero-vocab", _set_config(vocab_size=0), "vocab_size", "config.json"),
    Case("config-heads-do-not-divide", _set_config(head_dim=None, num_attention_heads=5), "not divisible",
         "config.json"),
    Case("config-tie-not-bool", _set_config(tie_word_embeddings="yes"), "tie_word_embeddings", "config.json"),
    Case("config-custom-code-architecture", _set_config(architectures=["EvilForCausalLM"], model_type="evil",
                                                         auto_map={"AutoModelForCausalLM": "evil.Evil"}),
         "is not supported", "config.json"),
    Case("missing-required-tensor", _drop_tensor("model.layers.1.mlp.up_proj.weight"), "missing", "in"),
    Case("tensor-not-in-architecture", _add_foreign_tensor, "not part of the LlamaForCausalLM", "safetensors"),
    Case("plan-ids-not-a-list", _edit_plan(lambda p: p.update(kept_token_ids="all")), "list of integers",
         "my-plan.json"),
    Case("plan-negative-id", _edit_plan(lambda p: p["kept_token_ids"].insert(0, -1)), "outside", "my-plan.json"),
    Case("plan-fingerprint-mismatch", _edit_plan(lambda p: p.update(source_fingerprint="sha256:0000")),
         "another model", "my-plan.json"),
    Case("plan-token-out-of-range", _edit_plan(lambda p: p["kept_token_ids"].append(10**6)), "outside",
         "my-plan.json"),
    Case("plan-duplicate-token", _edit_plan(lambda p: p["kept_token_ids"].append(5)), "twice", "my-plan.json"),
    Case("plan-duplicate-channel", _edit_plan(lambda p: p["kept_ffn_channels"][0].__setitem__(1, p[
        "kept_ffn_channels"][0][0])), "twice", "my-plan.json"),
    Case("plan-unequal-channels", _edit_plan(lambda p: p["kept_ffn_channels"][1].pop()), "same number",
         "my-plan.json"),
    Case("plan-zero-tokens", _edit_plan(lambda p: p.update(kept_token_ids=[])), "keeps nothing", "my-plan.json"),
    Case("plan-zero-channels", _edit_plan(lambda p: p.update(kept_ffn_channels=[[], []])), "keeps nothing",
         "my-plan.json"),
    Case("plan-wrong-layer-count", _edit_plan(lambda p: p["kept_ffn_channels"].pop()), "layers", "my-plan.json"),
    Case("plan-wrong-version", _edit_plan(lambda p: p.update(format_version=7)), "format_version", "my-plan.json"),
    Case("plan-not-json", lambda m, p: p.write_text("nope"), "cannot be parsed", "my-plan.json"),
]


@pytest.fixture()
def sharded_model(tmp_path: Path) -> tuple[Path, Path]:
    model = build_tiny_model("llama", dtype=torch.float32)
    folder = save_tiny_model(model, tmp_path / "in", max_shard_size="200KB")
    source = open_source(folder)
    plan = PrunePlan.identity(source.spec, source.checkpoint.fingerprint())
    plan = PrunePlan(plan.kept_token_ids, tuple(c[:64] for c in plan.kept_ffn_channels), plan.source_fingerprint)
    return folder, plan.save(tmp_path / "my-plan.json")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case: Case, sharded_model: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(case, *sharded_model, tmp_path, capsys)


def test_output_not_empty_needs_force(sharded_model: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, plan = sharded_model
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli([str(model), str(out), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 2 and "not empty" in err and "out" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _ = run_cli([str(model), str(out), "--plan", str(plan), "--no-progress", "--force"], capsys)
    assert code == 0 and not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_output_inside_input_is_refused(sharded_model: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, plan = sharded_model
    code, err = run_cli([str(model), str(model / "sub"), "--plan", str(plan)], capsys)
    assert code == 2 and "inside the input" in err
    assert not (model / "sub").exists()


def test_custom_code_is_ignored_for_a_native_architecture(sharded_model: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """auto_map never runs: a natively supported model exports, and the output drops the pointer."""
    model, plan = sharded_model
    edit_json(model / "config.json", lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_x.X"}))
    (model / "modeling_x.py").write_text("raise SystemExit('custom code must never run')\n")
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 0, err
    assert "auto_map" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert not (tmp_path / "out" / "modeling_x.py").exists()


def test_dry_run_writes_nothing(sharded_model: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model, plan = sharded_model
    code = main([str(model), str(tmp_path / "out"), "--plan", str(plan), "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and "ffn        160 -> 64" in printed and "nothing written" in printed
    assert not (tmp_path / "out").exists()


def test_failure_mid_export_leaves_nothing(sharded_model: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing (here: a disk error on the 5th tensor) removes the staging folder."""
    from converter.io import safetensors_writer as writer

    model, plan = sharded_model
    real_expect = writer.ShardWriter._expect  # every tensor passes here, written or kernel-copied
    calls = {"n": 0}

    def failing_expect(self, name, nbytes):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real_expect(self, name, nbytes)

    monkeypatch.setattr(writer.ShardWriter, "_expect", failing_expect)
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert os.listdir(model)
