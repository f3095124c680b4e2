"""Catalogue of hostile tokenizer files: exit 2, one line naming the file, no output or staging folder.

Every case starts from a tiny model with a real trained tokenizer (byte-level BPE with a chat
template in tokenizer_config.json, or SentencePiece BPE with tokenizer.model and
chat_template.jinja) and a plan that drops 40% of the tokens, so the tokenizer is actually
rewritten; the `gguf-` cases export GGUF with every token kept, where the GGUF exporter reads the
source tokenizer files itself. The unchanged-file cases keep every token (an identity plan and an
FFN-only one, both formats), so the files would be copied as they are: they must be refused just
the same. Chat templates the sandbox stops are not an error: they are copied.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.reference_prune import random_plan
from tests.support.refusal import Breaker, Case, assert_refused, edit_json, run_cli
from tests.support.tiny_models import build_tiny_model, save_tiny_model


def _set_config(**values: object) -> Breaker:
    return lambda model, plan: edit_json(model / "config.json", lambda c: c.update(values))


def _edit_tokenizer(edit: Callable[[dict], None]) -> Breaker:
    return lambda model, plan: edit_json(model / "tokenizer.json", edit)


def _edit_tokenizer_config(**values: object) -> Breaker:
    return lambda model, plan: edit_json(model / "tokenizer_config.json", lambda c: c.update(values))


def _write(name: str, data: bytes | str) -> Breaker:
    def brk(model: Path, plan: Path) -> None:
        if isinstance(data, bytes):
            (model / name).write_bytes(data)
        else:
            (model / name).write_text(data)
    return brk


def _grow_sparse(name: str, size: int) -> Breaker:
    return lambda model, plan: os.truncate(model / name, size)


def _added_token(token_id: object, content: str = "<|evil|>", special: object = True) -> Breaker:
    entry = {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
    return _edit_tokenizer(lambda t: t["added_tokens"].append(entry))


def _truncate_spm(model: Path, plan: Path) -> None:
    path = model / "tokenizer.model"
    path.write_bytes(path.read_bytes()[:-1000])


def _spm_of_another_tokenizer(model: Path, plan: Path) -> None:
    """A piece renamed: the protobuf is valid but disagrees with tokenizer.json."""
    path = model / "tokenizer.model"
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    proto.pieces[300].piece = "\u2581definitely-not-this"
    path.write_bytes(proto.SerializeToString())


def _without_chat_template(brk: Breaker) -> Breaker:
    def both(model: Path, plan: Path) -> None:
        (model / "chat_template.jinja").unlink()
        brk(model, plan)
    return both


def _contradicting_decoder(model: Path, plan: Path) -> None:
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    first = tokenizer["added_tokens"][0]
    edit_json(model / "tokenizer_config.json", lambda c: c["added_tokens_decoder"].__setitem__(
        str(first["id"]), {**c["added_tokens_decoder"][str(first["id"])], "content": "<|not-this|>"}))


TJ, TC, SPM = "tokenizer.json", "tokenizer_config.json", "tokenizer.model"
TOKENIZER_CASES = [
    Case("tokenizer-json-not-json", _write(TJ, "{oops"), "cannot be parsed", TJ, tokenizer="bpe"),
    Case("tokenizer-json-not-object", _write(TJ, "[1, 2]"), "not a JSON object", TJ, tokenizer="bpe"),
    Case("tokenizer-json-nested-too-deep", _write(TJ, "[" * 100_000), "RecursionError", TJ, tokenizer="bpe"),
    Case("tokenizer-json-huge", _grow_sparse(TJ, (1 << 30) + 1), "implausibly large", TJ, tokenizer="bpe"),
    Case("tokenizer-json-vocab-not-object", _edit_tokenizer(lambda t: t["model"].update(vocab=["a", "b"])),
         "model.vocab is not an object", TJ, tokenizer="bpe"),
    Case("tokenizer-json-vocab-id-not-integer", _edit_tokenizer(lambda t: t["model"]["vocab"].update(zzq="5")),
         "invalid id '5'", TJ, tokenizer="bpe"),
    Case("tokenizer-json-vocab-id-absurd", _edit_tokenizer(lambda t: t["model"]["vocab"].update(zzq=2**40)),
         "invalid id 1099511627776", TJ, tokenizer="bpe"),
    Case("tokenizer-json-vocab-id-past-embedding", _edit_tokenizer(lambda t: t["model"]["vocab"].update(zzq=5000)),
         "id 5000, beyond the model's 2000 embedding rows", TJ, tokenizer="bpe"),
    Case("tokenizer-json-added-id-past-embedding", _added_token(5000, "evil", special=False),
         "id 5000, beyond the model's 2000 embedding rows", TJ, tokenizer="bpe"),
    Case("tokenizer-json-added-id-not-integer", _added_token("7"), "needs an integer id", TJ, tokenizer="bpe"),
    Case("tokenizer-json-added-id-taken", _added_token(1999, "<|endoftext|>"), "already belongs to", TJ,
         tokenizer="bpe"),
    Case("tokenizer-json-added-flag-not-bool", _edit_tokenizer(lambda t: t["added_tokens"][0].update(special="no")),
         "cannot be loaded by the tokenizers library", TJ, tokenizer="bpe"),
    Case("tokenizer-json-merge-of-unknown-tokens", _edit_tokenizer(
        lambda t: t["model"]["merges"].insert(0, ["qqq", "zzz"])), "'qqq' is not in model.vocab", TJ,
         tokenizer="bpe"),
    Case("tokenizer-json-merge-not-strings", _edit_tokenizer(lambda t: t["model"]["merges"].insert(0, [1, 2])),
         "not a pair of tokens", TJ, tokenizer="bpe"),
    Case("tokenizer-json-merges-not-list", _edit_tokenizer(lambda t: t["model"].update(merges="a b")),
         "model.merges is not a list", TJ, tokenizer="bpe"),
    Case("tokenizer-json-pad-id-unknown", _edit_tokenizer(lambda t: t.update(padding={
        "strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 9999,
        "pad_type_id": 0, "pad_token": "<pad>"})), "inserts id 9999", TJ, tokenizer="bpe"),
    Case("tokenizer-json-unknown-pre-tokenizer", _edit_tokenizer(lambda t: t.update(pre_tokenizer={"type": "Evil"})),
         "cannot be loaded by the tokenizers library", TJ, tokenizer="bpe"),
    Case("tokenizer-json-template-ids-not-integers", _edit_tokenizer(
        lambda t: t["post_processor"]["special_tokens"]["<s>"].update(ids="1")), "no list of integer ids", TJ,
         tokenizer="spm"),
    Case("tokenizer-json-template-id-unknown", _edit_tokenizer(
        lambda t: t["post_processor"]["special_tokens"]["<s>"].update(ids=[9999])), "inserts id 9999", TJ,
         tokenizer="spm"),
    Case("tokenizer-json-flag-not-bool-no-template", _without_chat_template(_edit_tokenizer(
        lambda t: t["model"].update(byte_fallback="yes"))), "cannot be loaded by the tokenizers library", TJ,
         tokenizer="spm"),
    Case("tokenizer-model-random-bytes", _write(SPM, bytes(range(256)) * 20), "not a valid SentencePiece model",
         SPM, tokenizer="spm"),
    Case("tokenizer-model-truncated", _truncate_spm, "not a valid SentencePiece model", SPM, tokenizer="spm"),
    Case("tokenizer-model-empty", _write(SPM, b""), "is not a SentencePiece model", SPM, tokenizer="spm"),
    Case("tokenizer-model-tiktoken", _write(SPM, "IQ== 0\nIg== 1\n"), "is not a SentencePiece model", SPM,
         tokenizer="spm"),
    Case("tokenizer-model-of-another-tokenizer", _spm_of_another_tokenizer, "describe different tokenizers", SPM,
         tokenizer="spm"),
    Case("tokenizer-model-huge", _grow_sparse(SPM, (512 << 20) + 1), "implausibly large", SPM, tokenizer="spm"),
    Case("tokenizer-config-not-json", _write(TC, "{oops"), "cannot be parsed", TC, tokenizer="bpe"),
    Case("tokenizer-config-role-not-a-token", _edit_tokenizer_config(eos_token=5), "eos_token is 5", TC,
         tokenizer="bpe"),
    Case("tokenizer-config-specials-not-a-list", _edit_tokenizer_config(extra_special_tokens=5),
         "extra_special_tokens is 5", TC, tokenizer="spm"),
    Case("tokenizer-config-decoder-not-object", _edit_tokenizer_config(added_tokens_decoder=[1]),
         "added_tokens_decoder is [1]", TC, tokenizer="bpe"),
    Case("tokenizer-config-decoder-contradicts", _contradicting_decoder, "describe different tokenizers", TC,
         tokenizer="bpe"),
    Case("tokenizer-config-chat-template-not-text", _edit_tokenizer_config(chat_template=5),
         "chat_template is neither", TC, tokenizer="bpe"),
    Case("special-tokens-map-not-json", _write("special_tokens_map.json", "{oops"), "cannot be parsed",
         "special_tokens_map.json", tokenizer="spm"),
    Case("added-tokens-json-id-not-integer", _write("added_tokens.json", '{"<x>": "1"}'), "not an integer",
         "added_tokens.json", tokenizer="bpe"),
    Case("chat-template-not-utf8", _write("chat_template.jinja", b"\xff\xfe{{"), "cannot be read",
         "chat_template.jinja", tokenizer="spm"),
    Case("generation-config-eos-unknown", _write("generation_config.json", '{"eos_token_id": 99999}'),
         "has no token for", "generation_config.json", tokenizer="bpe"),
    Case("config-bos-unknown", _set_config(bos_token_id=99999), "has no token for", "config.json", tokenizer="bpe"),
    Case("gguf-tokenizer-vocab-id-past-embedding", _edit_tokenizer(lambda t: t["model"]["vocab"].update(zzq=5000)),
         "has token id 5000, but the embedding has only 2000 rows", "in/tokenizer.json", ("--format", "gguf"),
         tokenizer="bpe", drops_tokens=False),
    Case("gguf-added-id-not-integer", _added_token("7"), "cannot be loaded by the tokenizers library", TJ,
         ("--format", "gguf"), tokenizer="spm", drops_tokens=False),
    Case("gguf-chat-template-not-text", _edit_tokenizer_config(chat_template=5), "chat_template is neither", TC,
         ("--format", "gguf"), tokenizer="bpe", drops_tokens=False),
    Case("gguf-chat-template-not-utf8", _write("chat_template.jinja", b"\xff\xfe{{"), "cannot be read",
         "chat_template.jinja", ("--format", "gguf"), tokenizer="spm", drops_tokens=False),
]


# Files an export that keeps every token copies unchanged, broken the ways the rewrite path refuses.
UNCHANGED_CASES = [
    Case("tokenizer-json-not-json", _write(TJ, "{oops"), "cannot be parsed", TJ, tokenizer="bpe"),
    Case("tokenizer-json-not-object", _write(TJ, "[1, 2]"), "not a JSON object", TJ, tokenizer="bpe"),
    Case("tokenizer-json-unknown-pre-tokenizer", _edit_tokenizer(lambda t: t.update(pre_tokenizer={"type": "Evil"})),
         "cannot be loaded by the tokenizers library", TJ, tokenizer="bpe"),
    Case("tokenizer-model-random-bytes", _write(SPM, bytes(range(256)) * 20), "not a valid SentencePiece model",
         SPM, tokenizer="spm"),
    Case("tokenizer-model-tiktoken", _write(SPM, "IQ== 0\nIg== 1\n"), "is not a SentencePiece model", SPM,
         tokenizer="spm"),
    Case("tokenizer-config-not-json", _write(TC, "{oops"), "cannot be parsed", TC, tokenizer="bpe"),
    Case("tokenizer-config-role-not-a-token", _edit_tokenizer_config(eos_token=5), "eos_token is 5", TC,
         tokenizer="spm"),
    Case("tokenizer-config-decoder-contradicts", _contradicting_decoder, "describe different tokenizers", TC,
         tokenizer="bpe"),
]
# The rewrite path's cases for the other companion files, run again with a plan that keeps every token.
UNCHANGED_OTHER_FILES = [case for case in TOKENIZER_CASES
                         if case.id in ("special-tokens-map-not-json", "added-tokens-json-id-not-integer",
                                        "chat-template-not-utf8", "tokenizer-config-chat-template-not-text")]


@pytest.fixture()
def tokenized_model(tmp_path: Path, byte_level_tokenizer_dir: Path,
                    spm_dir: Path) -> Callable[..., tuple[Path, Path]]:
    """A builder: the tiny model with the case's tokenizer, and a plan that drops 40% of the tokens (or none)
    and keeps `channels` of the 160 FFN channels (all of them and every token: the identity plan)."""
    def build(case: Case, channels: int = 64) -> tuple[Path, Path]:
        tokenizer = byte_level_tokenizer_dir if case.tokenizer == "bpe" else spm_dir
        data = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = 1 + max([*data["model"]["vocab"].values(), *(a["id"] for a in data["added_tokens"])])
        folder = save_tiny_model(build_tiny_model("llama", vocab_size=vocab), tmp_path / "in")
        for f in tokenizer.iterdir():
            shutil.copyfile(f, folder / f.name)
        plan = random_plan(vocab, 160, 2, int(vocab * 0.6) if case.drops_tokens else None, channels, seed=1)
        return folder, plan.save(tmp_path / "my-plan.json")
    return build


@pytest.mark.parametrize("case", TOKENIZER_CASES, ids=[c.id for c in TOKENIZER_CASES])
def test_bad_tokenizer_is_refused_cleanly(case: Case, tokenized_model: Callable[..., tuple[Path, Path]],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(case, *tokenized_model(case), tmp_path, capsys)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize("channels", [160, 64], ids=["identity", "ffn-only"])
@pytest.mark.parametrize("case", UNCHANGED_CASES, ids=[c.id for c in UNCHANGED_CASES])
def test_unchanged_tokenizer_file_is_refused_cleanly(case: Case, channels: int, fmt: str,
                                                     tokenized_model: Callable[..., tuple[Path, Path]],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keeping every token copies the tokenizer files; a corrupt one is refused before anything is written."""
    kept_all = replace(case, drops_tokens=False, extra_args=("--format", fmt))
    assert_refused(kept_all, *tokenized_model(kept_all, channels), tmp_path, capsys)


@pytest.mark.parametrize("case", UNCHANGED_OTHER_FILES, ids=[c.id for c in UNCHANGED_OTHER_FILES])
def test_unchanged_companion_file_is_refused_cleanly(case: Case, tokenized_model: Callable[..., tuple[Path, Path]],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept_all = replace(case, drops_tokens=False)
    assert_refused(kept_all, *tokenized_model(kept_all), tmp_path, capsys)


def test_unchanged_check_runs_on_dry_runs_too(tokenized_model: Callable[..., tuple[Path, Path]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    case = Case("dry-run", _write(TJ, "{oops"), "cannot be parsed", TJ, ("--dry-run",), tokenizer="bpe",
                drops_tokens=False)
    assert_refused(case, *tokenized_model(case, 160), tmp_path, capsys)


def test_intact_unchanged_files_are_copied_byte_for_byte(tokenized_model: Callable[..., tuple[Path, Path]],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, plan = tokenized_model(Case("intact", lambda m, p: None, "", "", tokenizer="spm", drops_tokens=False))
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool.jinja").write_text("{{ messages[0]['content'] }}")
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 0, err
    for name in (TJ, TC, SPM, "chat_template.jinja", "additional_chat_templates/tool.jinja"):
        assert (tmp_path / "out" / name).read_bytes() == (model / name).read_bytes(), name


@pytest.mark.parametrize(("template", "warning"), [
    ("{% for i in range(10**9) %}x{% endfor %}", "items on range()"),  # past the sandbox's range cap
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion limit"),  # endless recursion
    ("{% for %}", None),  # does not compile: not rendered, silently
])
def test_hostile_chat_template_is_copied_not_fatal(template: str, warning: str | None,
                                                   tokenized_model: Callable[..., tuple[Path, Path]],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A template that cannot render on empty conversations contributes only the tokens it spells out; one
    that a limit stopped says so in one warning line naming its file."""
    model, plan = tokenized_model(Case("template", lambda m, p: None, "", "", tokenizer="spm"))
    (model / "chat_template.jinja").write_text(template)
    code, err = run_cli([str(model), str(tmp_path / "out"), "--plan", str(plan), "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == template
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if warning is None:
        assert not warnings, err
    else:
        assert len(warnings) == 1 and "chat_template.jinja" in warnings[0] and warning in warnings[0], err
