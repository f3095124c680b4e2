"""What the ONNX exporter refuses: one ConvertError line, exit status 2, and nothing written.

The refusals come before any tracing or writing: an out type onnxruntime cannot produce, an int4
block size MatMulNBits cannot take, a family without an ONNX recipe, RoPE that rescales with the
sequence length at run time, and a bidirectional (embedding) Gemma3.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from converter.cli import main
from converter.errors import ConvertError
from converter.source import open_source
from converter.plan import PrunePlan
from converter.prune import PrunedCheckpoint
from exporters.onnx import export as onnx_export
from exporters.options import ExportOptions
from tests.support.tiny_models import build_tiny_model, save_tiny_model


def _tiny(tmp_path: Path, family: str = "llama", **overrides: object) -> Path:
    return save_tiny_model(build_tiny_model(family, vocab_size=300, **overrides), tmp_path / "in")


def _identity_plan(src: Path, tmp_path: Path) -> Path:
    source = open_source(src)
    return PrunePlan.identity(source.spec).save(tmp_path / "plan.json")


def _cli(capsys: pytest.CaptureFixture[str], src: Path, plan: Path, out: Path, *extra: str) -> int:
    capsys.readouterr()
    return main([str(src), str(out), "--format", "onnx", "--plan", str(plan), "--no-progress", *extra])


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("extra,fragment", [
    (("--outtype", "bf16"), "fp32, fp16, int8, int4"),
    (("--outtype", "q4_0"), "fp32, fp16, int8, int4"),
    (("--outtype", "int4", "--int4-block-size", "24"), "power of two"),
    (("--outtype", "int4", "--int4-block-size", "8"), "16 or larger"),
])
def test_bad_outtype_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    extra: tuple[str, ...], fragment: str) -> None:
    src = _tiny(tmp_path)
    out = tmp_path / "out"
    assert _cli(capsys, src, _identity_plan(src, tmp_path), out, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and err.startswith("compact-convert: error:")
    _nothing_written(out)


@pytest.mark.parametrize("family,overrides,fragment", [
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     "rope type 'dynamic'"),
    ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
])
def test_untraceable_config_is_refused_naming_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        family: str, overrides: dict[str, object],
                                                        fragment: str) -> None:
    src = _tiny(tmp_path, family, **overrides)
    out = tmp_path / "out"
    assert _cli(capsys, src, _identity_plan(src, tmp_path), out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "config.json" in err
    _nothing_written(out)


def test_family_without_onnx_recipe_is_refused_before_writing(tmp_path: Path) -> None:
    src = _tiny(tmp_path)
    source = open_source(src)
    without_recipe = dataclasses.replace(source.spec.family_record, name="phi3", onnx=False)
    spec = dataclasses.replace(source.spec, family_record=without_recipe, architecture="Phi3ForCausalLM")
    pruned = PrunedCheckpoint(source.checkpoint, spec, PrunePlan.identity(source.spec))
    out = tmp_path / "staging"
    out.mkdir()
    with pytest.raises(ConvertError, match=r"does not support the Phi3ForCausalLM \(phi3\) family") as info:
        onnx_export(pruned, None, out, ExportOptions(progress=False))
    assert "\n" not in str(info.value)
    assert list(out.iterdir()) == []
