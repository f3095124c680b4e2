"""Tiny real tokenizers trained at test time on local text (Python's pydoc topics).

Tests need tokenizers that behave like the real ones (byte-level BPE with merges, special
tokens, a chat template) without any download; training one takes well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import pydoc_data.topics
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_lines() -> list[str]:
    """Deterministic local training text: every pydoc topic, split into lines."""
    lines: list[str] = []
    for key in sorted(pydoc_data.topics.topics):
        lines.extend(pydoc_data.topics.topics[key].splitlines())
    return [line for line in lines if line.strip()]


def train_byte_level_bpe(out_dir: Path, vocab_size: int = 2000) -> Path:
    """Train a GPT-2/SmolLM2-style byte-level BPE and save tokenizer files into `out_dir`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": None,
        "pad_token": "<|endoftext|>",
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {
                "content": t, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


SPM_CONTROL_SYMBOLS = ["<|im_start|>", "<|im_end|>", "<unused0>", "<unused1>", "<unused2>"]


def train_sentencepiece_bpe(out_dir: Path, vocab_size: int = 1500) -> Path:
    """Train a Llama-2-style SentencePiece BPE (byte fallback, dummy prefix) and save it the HF way.

    Writes tokenizer.model (the trained protobuf), tokenizer.json (transformers' own conversion
    of it, with a Metaspace pre-tokenizer and a BOS template), tokenizer_config.json with role
    tokens and `<unusedN>` placeholders, and chat_template.jinja. transformers 5's conversion
    splits leading whitespace runs differently from SentencePiece itself, so compare each
    runtime only with itself.
    """
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9995, split_digits=True, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=SPM_CONTROL_SYMBOLS,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
              "extra_special_tokens": SPM_CONTROL_SYMBOLS}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out_dir
