"""The general probe: the shipped prompts, batched greedy answers, and the retention metrics.

Greedy answers are checked against transformers' own `generate(do_sample=False)` one prompt at
a time, on tiny random models with a real trained tokenizer and its chat template, so the left
padding, the KV cache and the per-row stop tokens cannot change a single token.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from converter.errors import ConvertError
from converter.score.engine import ModelRunner
from converter.score.general_probe import (ProbeAnswer, ProbePrompt, cannot_generate, format_prompt, generate_answers,
                                   load_probe, stop_ids)
from converter.score.retention import (Retention, answer_bits_per_byte, answer_bytes, dropped_byte_share,
                                       retokenize, token_byte_table)
from converter.source import open_source
from tests.support.tiny_models import build_tiny_model, save_tiny_model
from tests.support.tiny_tokenizers import train_byte_level_bpe
from tests.support.scratch import ModuleTmp

TOPICS = {"facts", "history", "science", "health", "cooking", "travel", "daily_life", "writing", "maths", "code",
          "translation", "money", "nature", "sport", "technology"}
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Hi",
           "Translate to German: 'Good morning, how are you?' and then explain the grammar briefly."]


@pytest.fixture(scope="module")
def tokenizer_dir(module_tmp: ModuleTmp) -> Path:
    return train_byte_level_bpe(module_tmp.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def prompts(texts: list[str] = PROMPTS) -> list[ProbePrompt]:
    return [ProbePrompt(id=i, topic="test", prompt=t, split="calib") for i, t in enumerate(texts)]


def test_probe_loads_with_every_topic_and_a_fifth_held_out() -> None:
    probe = load_probe()
    assert len(probe) >= 400
    assert len({p.id for p in probe}) == len(probe)
    assert len({p.prompt for p in probe}) == len(probe)
    assert TOPICS <= {p.topic for p in probe}
    heldout = load_probe("heldout")
    assert all(p.split == "heldout" for p in heldout)
    assert 0.15 <= len(heldout) / len(probe) <= 0.25
    assert {p.topic for p in heldout} == {p.topic for p in probe}
    assert len(load_probe("calib")) + len(heldout) == len(probe)
    france = [p for p in heldout if p.prompt.startswith("What is the capital of France?")]
    assert france and "museums" in france[0].prompt
    assert min(Counter(p.topic for p in probe).values()) >= 20


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ConvertError, match="general_probe.jsonl: probe split 'test'"):
        load_probe("test")


def test_prompts_go_through_the_chat_template_when_there_is_one(tokenizer) -> None:
    text = format_prompt(tokenizer, "Hello there")
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    assert format_prompt(plain, "Hello there") == "Hello there\n"


def reference_answer(model, answer: ProbeAnswer, stops: tuple[int, ...], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([answer.prompt_ids]), attention_mask=torch.ones(1, len(answer.prompt_ids),
                                                                                        dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(stops), pad_token_id=0)
    ids = out[0, len(answer.prompt_ids):].tolist()
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return ids[:cut]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_batched_greedy_answers_equal_generate_one_by_one(family: str, tokenizer) -> None:
    model = build_tiny_model(family, vocab_size=len(tokenizer), dtype=torch.float64)
    first = generate_answers(model, tokenizer, prompts(), max_new_tokens=12, batch_size=3)
    # Stop on a token some answers produce mid-way, so rows end at different steps.
    common = Counter(t for a in first for t in a.answer_ids[1:]).most_common(1)[0][0]
    answers = generate_answers(model, tokenizer, prompts(), max_new_tokens=12, batch_size=3, eos=common)
    stops = stop_ids(tokenizer, common)
    assert common in stops
    assert any(a.stopped for a in answers)
    for prompt, answer in zip(prompts(), answers):
        assert answer.prompt_id == prompt.id
        assert answer.prompt_text == format_prompt(tokenizer, prompt.prompt)
        assert list(answer.answer_ids) == reference_answer(model, answer, stops, 12)
        assert answer.stopped == (len(answer.answer_ids) < 12)
        assert answer.answer_text == tokenizer.decode(list(answer.answer_ids), skip_special_tokens=True)


@pytest.fixture(scope="module")
def saved_model(module_tmp: ModuleTmp, tokenizer_dir: Path, tokenizer):
    model = build_tiny_model("llama", vocab_size=len(tokenizer))
    folder = save_tiny_model(model, module_tmp.mktemp("model") / "m", tokenizer_dir=tokenizer_dir)
    return model, folder


def test_scoring_runner_answers_like_the_causal_lm(saved_model, tokenizer) -> None:
    model, folder = saved_model
    runner = ModelRunner(open_source(folder), torch.device("cpu"), layerwise=False)
    assert cannot_generate(runner) is None
    expected = generate_answers(model, tokenizer, prompts(), max_new_tokens=8, batch_size=2)
    assert generate_answers(runner, tokenizer, prompts(), max_new_tokens=8, batch_size=4) == expected
    bpb = answer_bits_per_byte(model, expected)
    assert answer_bits_per_byte(runner, expected) == pytest.approx(bpb, rel=1e-5)


def test_layer_by_layer_runner_says_why_it_cannot_answer(saved_model, tokenizer) -> None:
    runner = ModelRunner(open_source(saved_model[1]), torch.device("cpu"), layerwise=True)
    assert "layer by layer" in (cannot_generate(runner) or "")
    with pytest.raises(ConvertError, match="cannot answer the general probe: the model is scored layer by layer"):
        generate_answers(runner, tokenizer, prompts())


def test_answer_bits_per_byte_equals_a_direct_computation(saved_model, tokenizer) -> None:
    model, _ = saved_model
    answers = generate_answers(model, tokenizer, prompts(), max_new_tokens=10, batch_size=4)
    bits = 0.0
    with torch.no_grad():
        for a in answers:
            ids = torch.tensor([list(a.prompt_ids) + list(a.answer_ids)])
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            for pos in range(len(a.prompt_ids), ids.shape[1]):
                bits -= float(logp[pos - 1, ids[0, pos]]) / math.log(2)
    size = sum(len(a.answer_text.encode("utf-8")) for a in answers)
    assert answer_bytes(answers) == size > 0
    assert answer_bits_per_byte(model, answers) == pytest.approx(bits / size, rel=1e-5)


def test_retokenized_answers_keep_their_texts(saved_model, tokenizer) -> None:
    answers = generate_answers(saved_model[0], tokenizer, prompts(), max_new_tokens=6, batch_size=4)
    again = retokenize(answers, tokenizer)
    for a, b in zip(answers, again):
        assert (b.prompt_text, b.answer_text, b.prompt_ids) == (a.prompt_text, a.answer_text, a.prompt_ids)
        assert tokenizer.decode(list(b.answer_ids)) == a.answer_text


def answer(ids: tuple[int, ...], text: str = "") -> ProbeAnswer:
    return ProbeAnswer(prompt_id=0, prompt_text="", prompt_ids=(1,), answer_ids=ids, answer_text=text, stopped=True)


def test_dropped_byte_share_counts_the_bytes_of_dropped_tokens() -> None:
    table = [b"", b"a", b"bc", b"def", b"\xc3"]
    answers = [answer((1, 2, 3)), answer((3, 4)), answer(())]
    assert dropped_byte_share(answers, [0, 1, 2], table) == pytest.approx(7 / 10)
    assert dropped_byte_share(answers, range(5), table) == 0.0
    assert dropped_byte_share(answers, [3], table) == pytest.approx(4 / 10)
    assert dropped_byte_share([], [0], table) == 0.0


def test_token_bytes_spell_the_text_exactly(tokenizer) -> None:
    table = token_byte_table(tokenizer)
    assert len(table) >= len(tokenizer)
    for text in ["The capital of France is Paris.", "café – naïve ☕ 3.14\n\tdef f(x):", "<|im_end|> end"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        spelled = b"".join(table[i] for i in ids)
        assert spelled == text.replace("<|im_end|>", "").encode("utf-8")


def test_retention_record_serialises() -> None:
    answers = [answer((1,), "Paris"), answer((2,), "é")]
    record = Retention.of(0.25, 1.5, 1.0, answers)
    assert record.ratio == 1.5 and record.prompts == 2 and record.answer_bytes == 7
    assert record.to_json() == {"dropped_share": 0.25, "answer_bpb": 1.5, "dense_answer_bpb": 1.0, "ratio": 1.5,
                                "prompts": 2, "answer_bytes": 7}
