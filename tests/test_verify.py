"""`compact-convert verify` on real exports: passes on every format, fails on a tampered one.

A tiny Llama with a real trained byte-level BPE is pruned (vocabulary + FFN) and exported to hf,
GGUF f32 and f16, and ONNX fp32; verify must pass on each with --reference (tokenizer, logits,
bits per byte). It must fail with exit 1 and name the first mismatch for a GGUF whose token
strings were swapped in its metadata, and fail the logit check for an hf output whose lm_head was
perturbed. Bad input exits 2 with one line naming the file. The general retention row must equal
the figures computed directly with converter.score.retention, and be exact (nothing dropped, ratio
1) for a plan that keeps everything. One test runs the real pruned SmolLM2-135M in all three formats.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from converter.cli import main
from converter.pipeline import export
from converter.source import open_source
from converter.verify.probe import PROBE_SNIPPETS
from exporters.options import ExportOptions
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.scratch import ModuleTmp

FORMATS = [("hf", None), ("gguf", "f32"), ("gguf", "f16"), ("onnx", "fp32")]


def _name(fmt: str, outtype: str | None) -> str:
    return fmt if outtype is None else f"{fmt}-{outtype}"


@pytest.fixture(scope="module")
def tiny(module_tmp: ModuleTmp, byte_level_tokenizer_dir: Path) -> Path:
    """root/in (the dense source), root/text.txt and one pruned export per FORMATS entry."""
    root = module_tmp.mktemp("verify-tiny")
    model = build_tiny_model("llama", seed=0, vocab_size=2000)
    src = save_tiny_model(model, root / "in", tokenizer_dir=byte_level_tokenizer_dir)
    cfg = model.config
    plan = random_plan(cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, 1200, 96, seed=1)
    for fmt, outtype in FORMATS:
        export(open_source(src), plan, root / _name(fmt, outtype), fmt, ExportOptions(outtype=outtype, progress=False))
    (root / "text.txt").write_text("The module defines a class.\n" * 20 + "x = [1, 2, 3]\n", encoding="utf-8")
    return root


def _verify(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["verify", *map(str, args), "--threads", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(out: str, check: str) -> str:
    rows = [line for line in out.splitlines() if line.startswith(check + "  ")]
    assert len(rows) == 1, out
    return rows[0]


@pytest.mark.parametrize("fmt,outtype", FORMATS, ids=[_name(*f) for f in FORMATS])
def test_passes_on_every_format(tiny: Path, capsys: pytest.CaptureFixture[str], fmt: str, outtype: str | None) -> None:
    code, out, _ = _verify(capsys, tiny / _name(fmt, outtype), "--reference", tiny / "in", "--text", tiny / "text.txt")
    print(out)
    assert code == 0, out
    for check in ("tokenizer parity", "loads, vocabulary", "logit parity"):
        assert _row(out, check).endswith("PASS")
    relative = float(re.search(r"rel (\S+),", _row(out, "logit parity")).group(1))
    assert relative <= {"hf": 0.0, "f32": 1e-4, "f16": 1e-2, "fp32": 1e-4}[outtype or fmt]
    bpb = [float(x) for x in re.findall(r"(\d+\.\d+) bits/byte", out)]
    assert len(bpb) == 2 and all(0 < b < 20 for b in bpb)
    assert _row(out, "general retention").endswith("INFO")
    assert "general retention: 'What is the capital of France?" in out


def test_without_reference_says_what_could_not_run(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _verify(capsys, tiny / "gguf-f32")
    assert code == 0, out
    assert _row(out, "tokenizer parity").endswith("PASS")
    logits = _row(out, "logit parity")
    assert logits.endswith("SKIP") and "--reference IN" in logits
    retention = _row(out, "general retention")
    assert retention.endswith("SKIP") and "--reference IN" in retention
    assert "2 skipped: logit parity, general retention" in out


def _swap_gguf_tokens(path: Path, reference_dir: Path) -> tuple[int, int]:
    """Swap two same-length token strings in tokenizer.ggml.tokens, in place; returns their ids."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    used = tokenizer.encode(PROBE_SNIPPETS[0], add_special_tokens=False)
    reader = GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    parts = {i: field.parts[field.data[i]] for i in used}
    a, b = next((x, y) for x in used for y in used if x != y and len(parts[x]) == len(parts[y]) > 1
                and bytes(parts[x]) != bytes(parts[y]))
    first = parts[a].copy()
    parts[a][:] = parts[b]
    parts[b][:] = first
    reader.data.flush()
    return a, b


def test_fails_on_gguf_with_swapped_token_strings(tiny: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny / "gguf-f32", tampered)
    a, b = _swap_gguf_tokens(next(tampered.glob("*.gguf")), tampered)
    code, out, _ = _verify(capsys, tampered, "--reference", tiny / "in")
    print(out)
    assert code == 1
    row = _row(out, "tokenizer parity")
    assert row.endswith("FAIL") and "probe line 1, token" in row
    detail = re.search(r"tokenizer parity: first mismatch at probe line 1 .*: OUT ids \[(\d+).* reference ids \[(\d+)",
                       out)
    assert detail, out
    got, want = detail.groups()
    assert {int(got), int(want)} == {a, b}, "llama.cpp must emit the swapped id where the reference has the other"
    assert "FAILED: tokenizer parity" in out


def test_fails_on_hf_with_perturbed_lm_head(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny / "hf", broken)
    weights = broken / "model.safetensors"
    state = load_file(weights)
    name = "lm_head.weight" if "lm_head.weight" in state else "model.embed_tokens.weight"
    generator = torch.Generator().manual_seed(0)
    state[name] = state[name] + 0.05 * torch.randn(state[name].shape, generator=generator).to(state[name].dtype)
    save_file(state, weights, metadata={"format": "pt"})
    code, out, _ = _verify(capsys, broken, "--reference", tiny / "in")
    print(out)
    assert code == 1
    assert _row(out, "tokenizer parity").endswith("PASS")
    row = _row(out, "logit parity")
    assert row.endswith("FAIL")
    assert float(re.search(r"rel (\S+),", row).group(1)) > 1e-3
    assert "FAILED: logit parity" in out


def test_bad_input_exits_2_with_one_line(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing-here"
    code, out, err = _verify(capsys, missing)
    assert code == 2 and err.count("\n") == 1 and str(missing) in err and "does not exist" in err

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "weights.bin").write_bytes(b"\0" * 16)
    code, _, err = _verify(capsys, odd)
    assert code == 2 and err.count("\n") == 1 and "is not a compact-convert output" in err

    no_plan = tmp_path / "no-plan"
    shutil.copytree(tiny / "gguf-f32", no_plan)
    (no_plan / "prune_plan.json").unlink()
    code, _, err = _verify(capsys, no_plan, "--reference", tiny / "in")
    assert code == 2 and err.count("\n") == 1 and str(no_plan / "prune_plan.json") in err

    code, _, err = _verify(capsys, tiny / "hf", "--text", tmp_path / "missing.txt")
    assert code == 2 and err.count("\n") == 1 and "missing.txt" in err

    code, _, err = _verify(capsys, tiny / "hf", "--reference", tmp_path / "no-such-source")
    assert code == 2 and err.count("\n") == 1 and "no-such-source" in err


def _retention_numbers(out: str) -> tuple[float, float, float, float]:
    """(dropped share, pruned answer bpb, dense answer bpb, ratio) as the general retention row prints them."""
    found = re.search(r"dropped (\S+)%, bpb (\S+) / (\S+) = (\S+)x", _row(out, "general retention"))
    assert found, out
    dropped, pruned, dense, ratio = map(float, found.groups())
    return dropped / 100, pruned, dense, ratio


def _direct_retention(dense_dir: Path, pruned_dir: Path, prompts: int, new_tokens: int) -> Any:
    """The same figures computed here with converter.score.retention, models loaded as verify loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from converter.plan import PrunePlan
    from converter.score.general_probe import generate_answers, load_probe
    from converter.score.retention import (Retention, answer_bits_per_byte, dropped_byte_share, retokenize,
                                           token_byte_table)

    def load(folder: Path) -> tuple[Any, Any]:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
        return model.eval(), AutoTokenizer.from_pretrained(str(folder))

    probe = load_probe("heldout")[:prompts]
    dense, dense_tok = load(dense_dir)
    answers = generate_answers(dense, dense_tok, probe, new_tokens)
    kept = PrunePlan.load(pruned_dir / "prune_plan.json").kept_token_ids
    dropped = dropped_byte_share(answers, kept, token_byte_table(dense_tok))
    dense_bpb = answer_bits_per_byte(dense, retokenize(answers, dense_tok))
    pruned, pruned_tok = load(pruned_dir)
    return Retention.of(dropped, answer_bits_per_byte(pruned, retokenize(answers, pruned_tok)), dense_bpb, answers)


def test_retention_row_equals_a_direct_computation(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured from IN and the rebuilt reference, not copied: the same numbers as computing them directly."""
    code, out, _ = _verify(capsys, tiny / "gguf-f32", "--reference", tiny / "in", "--retention-prompts", "5",
                           "--retention-tokens", "12")
    print(out)
    assert code == 0, out
    row = _row(out, "general retention")
    assert row.endswith("INFO") and "5 held-out everyday prompts" in row
    dropped, pruned, dense, ratio = _retention_numbers(out)
    # The hf export holds the reference's very tensors and tokenizer.
    direct = _direct_retention(tiny / "in", tiny / "hf", 5, 12)
    assert 0 < direct.dropped_share < 1 and direct.prompts == 5
    assert dropped == pytest.approx(direct.dropped_share, abs=1e-6)
    assert pruned == pytest.approx(direct.answer_bpb, abs=2e-6)
    assert dense == pytest.approx(direct.dense_answer_bpb, abs=2e-6)
    assert ratio == pytest.approx(direct.ratio, abs=2e-4)
    assert "general retention: 'What is the capital of France?" in out


def test_retention_of_an_identity_plan_is_exact(tiny: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from converter.plan import PrunePlan
    from converter.verify.retention_check import measure_retention

    source = open_source(tiny / "in")
    out = tmp_path / "identity"
    export(source, PrunePlan.identity(source.spec), out, "hf", ExportOptions(progress=False))
    code, printed, _ = _verify(capsys, out, "--reference", tiny / "in", "--retention-prompts", "4",
                               "--retention-tokens", "10")
    assert code == 0, printed
    dropped, pruned, dense, ratio = _retention_numbers(printed)
    assert dropped == 0 and pruned == dense and ratio == 1
    measured = measure_retention(tiny / "in", out, tuple(range(source.spec.dims.vocab)), 4, 10).retention
    assert measured.dropped_share == 0 and abs(measured.ratio - 1) <= 1e-6 and measured.answer_bytes > 0


def test_retention_can_be_turned_off(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _verify(capsys, tiny / "hf", "--reference", tiny / "in", "--retention-prompts", "0")
    assert code == 0, out
    row = _row(out, "general retention")
    assert row.endswith("SKIP") and "--retention-prompts 0" in row
    code, _, err = _verify(capsys, tiny / "hf", "--retention-prompts", "-1")
    assert code == 2 and err.count("\n") == 1 and "--retention-prompts" in err


@pytest.fixture(scope="module")
def smollm2(fixtures_root: Path, module_tmp: ModuleTmp) -> tuple[Path, Path]:
    """The real SmolLM2-135M source and a folder with its pruned hf, GGUF f32 and ONNX fp32 exports."""
    from tests.support.smollm2_plans import smollm2_plan
    from tools.smollm2_hf import cached_smollm2_hf

    src = cached_smollm2_hf(fixtures_root)
    root = module_tmp.mktemp("verify-smollm2")
    plan = smollm2_plan(open_source(src))
    for fmt, outtype in (("hf", None), ("gguf", "f32"), ("onnx", "fp32")):
        export(open_source(src), plan, root / fmt, fmt, ExportOptions(outtype=outtype, progress=False))
    return src, root


@pytest.mark.parametrize("fmt", ["hf", "gguf", "onnx"])
def test_real_smollm2_passes(smollm2: tuple[Path, Path], capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    src, root = smollm2
    code, out, _ = _verify(capsys, root / fmt, "--reference", src)
    print(out)
    assert code == 0, out
    assert "49152" not in _row(out, "loads, vocabulary")
    for check in ("tokenizer parity", "loads, vocabulary", "logit parity"):
        assert _row(out, check).endswith("PASS")
