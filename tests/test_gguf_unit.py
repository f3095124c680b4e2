"""The GGUF exporter's parts against their references, and bad input refused before anything is written.

The family table is checked against gguf-py's own tensor map, the q/k permutation against
llama.cpp's converter formula, the written file (read back with gguf-py's GGUFReader) for its
keys, types and transforms, the pre-tokenizer detection on real and trained tokenizers, and every
refusal through the CLI: exit status 2, one line naming the problem, no output folder left.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader

from converter.arch.families import FAMILIES
from converter.arch.gguf_names import EXPERT_STACKS, TENSOR_NAMES
from converter.cli import main
from converter.plan import PrunePlan
from exporters.gguf.pre_tokenizer_choice import identify_pre
from exporters.gguf.tensors import llama_permutation
from exporters.gguf.vocab import read_tokenizer_json
from tests.support.gguf_runtime import load_llama, tokenize, train_qwen2_style_bpe
from tests.support.reference_prune import random_plan
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.tiny_tokenizers import train_byte_level_bpe
from tools import smollm2_hf
from tests.support.scratch import ModuleTmp

FIXTURES = Path(__file__).parent / ".fixtures"


@pytest.fixture(scope="module")
def gpt2_tokenizer(module_tmp: ModuleTmp) -> Path:
    return train_byte_level_bpe(module_tmp.mktemp("gpt2-tok"), 2000)


def _model(tmp_path: Path, family: str, tokenizer: Path, **overrides: object) -> tuple[Path, Path]:
    """A saved tiny model and an FFN + vocabulary plan for it."""
    model = build_tiny_model(family, seed=2, vocab_size=2000, **overrides)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=tokenizer)
    plan = random_plan(2000, model.config.intermediate_size, model.config.num_hidden_layers, 1500, 64, seed=2)
    return src, plan.save(tmp_path / "plan.json")


def _convert(src: Path, plan: Path, out: Path, *extra: str) -> int:
    return main([str(src), str(out), "--format", "gguf", "--plan", str(plan), "--no-progress", *extra])


def _fields(path: Path) -> dict[str, object]:
    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("family", sorted(name for name, f in FAMILIES.items() if f.gguf is not None))
def test_names_agree_with_gguf_py_tensor_map(family: str) -> None:
    record = FAMILIES[family]
    assert record.gguf is not None
    arch = next(a for a in gguf.MODEL_ARCH if gguf.MODEL_ARCH_NAMES[a] == record.gguf.arch)
    mapping = gguf.get_tensor_name_map(arch, 2)
    for tensor in record.tensors:
        if tensor.role in EXPERT_STACKS:  # the converter maps the stack's name: no expert index, gate_up_proj split
            merged = tensor.name.format(layer=1, expert="").replace("..", ".").removesuffix(".weight") + ".weight"
            halves = [merged.replace("gate_up_proj", p) for p in ("gate_proj", "up_proj")]
            sources = halves if "gate_up_proj" in merged else [merged]
            assert [mapping.get_name(n, try_suffixes=(".weight",)) for n in sources] == \
                [n.format(layer=1) for n in EXPERT_STACKS[tensor.role]], (family, tensor.role)
            continue
        hf_name = tensor.name.format(layer=1)
        expected = mapping.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if tensor.role == "lm_head" and record.gguf.lm_head == "absent":
            assert expected is None
            continue
        assert TENSOR_NAMES[tensor.role].format(layer=1) == expected, (family, tensor.role)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (9, 3), (8, 1)])
def test_llama_permutation_matches_the_converter_formula(heads: int, kv_heads: int) -> None:
    head_dim, hidden = 8, 16
    for n, rows in ((heads, heads * head_dim), (kv_heads, kv_heads * head_dim)):
        w = torch.randn(rows, hidden)
        converted = w.reshape(n, 2, rows // n // 2, hidden).swapaxes(1, 2).reshape(rows, hidden)
        assert torch.equal(w[list(llama_permutation(rows, n))], converted)


def test_written_file_carries_keys_types_and_transforms(tmp_path: Path, gpt2_tokenizer: Path) -> None:
    layer_types = ["sliding_attention", "full_attention"]
    model = build_tiny_model("gemma3_text", seed=3, vocab_size=2000, query_pre_attn_scalar=16, layer_types=layer_types)
    src = save_tiny_model(model, tmp_path / "in", tokenizer_dir=gpt2_tokenizer)
    plan = random_plan(2000, 160, 2, 1200, 64, seed=3).save(tmp_path / "plan.json")
    assert _convert(src, plan, tmp_path / "out", "--outtype", "q8_0") == 0
    kept = PrunePlan.load(tmp_path / "out" / "prune_plan.json")
    path = tmp_path / "out" / "in.gguf"
    fields = _fields(path)
    assert fields["general.architecture"] == "gemma3"
    assert fields["gemma3.embedding_length"] == 64 and fields["gemma3.feed_forward_length"] == 64
    assert fields["gemma3.vocab_size"] == kept.vocab_size == len(fields["tokenizer.ggml.tokens"])
    assert fields["gemma3.attention.sliding_window"] == 8
    assert fields["gemma3.attention.sliding_window_pattern"] == [True, False]
    assert fields["gemma3.rope.freq_base"] == 1e6 and fields["gemma3.rope.freq_base_swa"] == 1e4
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields["general.compact_convert.vocab_size_before"] == 2000
    assert fields["general.compact_convert.vocab_size_after"] == kept.vocab_size
    assert fields["general.compact_convert.intermediate_size_after"] == 64
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    assert "output.weight" not in tensors
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0 and tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type == Q.F32
    norm = model.model.layers[0].post_feedforward_layernorm.weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.0.post_ffw_norm.weight"].data, norm + np.float32(1))


def test_untied_head_and_outtypes_load_in_llama_cpp(tmp_path: Path, gpt2_tokenizer: Path) -> None:
    src, plan = _model(tmp_path, "llama", gpt2_tokenizer, tie_word_embeddings=False)
    for outtype, file_type in (("bf16", 32), ("q4_0", 2), ("q5_1", 9), ("q4_k_m", 15)):
        assert _convert(src, plan, tmp_path / outtype, "--outtype", outtype) == 0
        path = tmp_path / outtype / "in.gguf"
        fields = _fields(path)
        assert fields["general.file_type"] == file_type
        assert "output.weight" in {t.name for t in GGUFReader(str(path)).tensors}
        llm = load_llama(path)
        assert tokenize(llm, "hello world") and llm.n_vocab() == len(fields["tokenizer.ggml.tokens"])
        assert not list((tmp_path / outtype).glob(".*.gguf")), "the K-quant staging file must be removed"


def test_pre_tokenizer_is_named_from_the_source(tmp_path: Path, gpt2_tokenizer: Path) -> None:
    smollm2 = smollm2_hf.cached_smollm2_hf(FIXTURES) / "tokenizer.json"
    name, how = identify_pre(smollm2, json.loads(smollm2.read_text()), None)
    assert (name, how) == ("smollm", "token hash of HuggingFaceTB/SmolLM-135M")
    qwen = train_qwen2_style_bpe(tmp_path / "qwen", 2000) / "tokenizer.json"
    assert identify_pre(qwen, read_tokenizer_json(qwen.parent), None) == ("qwen2", "pre_tokenizer definition")
    gpt2 = gpt2_tokenizer / "tokenizer.json"
    assert identify_pre(gpt2, read_tokenizer_json(gpt2_tokenizer), None)[0] == "gpt-2"
    assert identify_pre(gpt2, read_tokenizer_json(gpt2_tokenizer), "llama-bpe") == ("llama-bpe", "--pre")


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def _edit_config(src: Path, **changes: object) -> None:
    path = src / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("case", ["outtype", "pre", "rope", "attention_scale", "untied_gemma", "activation",
                                  "granite_head_dim"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, gpt2_tokenizer: Path,
                                                  capsys: pytest.CaptureFixture[str], case: str) -> None:
    family = {"attention_scale": "gemma2", "untied_gemma": "gemma2", "granite_head_dim": "granite"}.get(case, "llama")
    overrides: dict[str, object] = {"query_pre_attn_scalar": 16} if family == "gemma2" else {}
    if case == "granite_head_dim":  # transformers' Granite honours head_dim; llama.cpp's takes hidden/heads
        overrides["head_dim"] = 8
    if case == "untied_gemma":
        overrides["tie_word_embeddings"] = False
    src, plan = _model(tmp_path, family, gpt2_tokenizer, **overrides)
    extra: list[str] = []
    needles = {"outtype": ("--outtype 'q3_x'",), "pre": ("--pre 'nonsense'",), "rope": ("rope_type 'dynamic'",),
               "attention_scale": ("query_pre_attn_scalar", "1/sqrt(16)"), "untied_gemma": ("untied lm_head",),
               "activation": ("hidden_act", "gelu"),
               "granite_head_dim": ("'head_dim' is 8", "hidden_size / num_attention_heads = 16")}[case]
    if case == "outtype":
        extra = ["--outtype", "q3_x"]
    elif case == "pre":
        extra = ["--pre", "nonsense"]
    elif case == "rope":
        _edit_config(src, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    elif case == "attention_scale":
        _edit_config(src, query_pre_attn_scalar=256)
    elif case == "activation":
        _edit_config(src, hidden_act="gelu")
    out = tmp_path / "out"
    capsys.readouterr()
    assert _convert(src, plan, out, *extra) == 2
    _one_error_line(capsys, *needles)
    _nothing_written(out)


def test_unknown_pre_tokenizer_is_refused_unless_named(tmp_path: Path, gpt2_tokenizer: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    for f in gpt2_tokenizer.iterdir():
        (tokenizer / f.name).write_bytes(f.read_bytes())
    data = json.loads((tokenizer / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, data["pre_tokenizer"]]}
    (tokenizer / "tokenizer.json").write_text(json.dumps(data))
    src, plan = _model(tmp_path, "llama", tokenizer)
    capsys.readouterr()
    assert _convert(src, plan, tmp_path / "out") == 2
    _one_error_line(capsys, "cannot tell which llama.cpp pre-tokenizer", "--pre NAME")
    _nothing_written(tmp_path / "out")
    assert _convert(src, plan, tmp_path / "named", "--pre", "gpt-2") == 0
    assert _fields(tmp_path / "named" / "in.gguf")["tokenizer.ggml.pre"] == "gpt-2"


def test_k_quant_without_the_llama_extra_names_it(tmp_path: Path, gpt2_tokenizer: Path) -> None:
    src, plan = _model(tmp_path, "llama", gpt2_tokenizer)
    out = tmp_path / "out"
    code = ("import sys; sys.modules['llama_cpp'] = None; from converter.cli import main; "
            f"sys.exit(main([{str(src)!r}, {str(out)!r}, '--format', 'gguf', '--plan', {str(plan)!r}, "
            "'--outtype', 'q4_k_m', '--no-progress']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "compact-convert[llama]" in done.stderr, done.stderr
    _nothing_written(out)
