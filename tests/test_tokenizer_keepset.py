"""Keep-set rules of converter.tokenizer.plan_tokenizer on tiny trained and hand-made tokenizers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from converter.tokenizer import TokenizerError, TokenizerPlanner, TokenizerRewrite, plan_tokenizer, write_tokenizer
from tests.support.tiny_tokenizers import SPECIAL_TOKENS, corpus_lines


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _hand_made(folder: Path, vocab: list[str], merges: list[list[str]], **config: object) -> Path:
    """A tokenizer.json with a plain (not byte-level, no byte fallback) BPE over `vocab`."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, [tuple(m) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_byte_level_keeps_specials_alphabet_and_template(byte_level_tokenizer_dir: Path) -> None:
    tok = Tokenizer.from_file(str(byte_level_tokenizer_dir / "tokenizer.json"))
    rewrite = plan_tokenizer(byte_level_tokenizer_dir, [tok.token_to_id("the")])
    kept = {tok.id_to_token(i) for i in rewrite.kept_ids}
    assert set(SPECIAL_TOKENS) <= kept
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= kept
    scaffold = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    assert set(tok.encode(scaffold).ids) <= set(rewrite.kept_ids)  # what the chat template renders
    assert rewrite.added_by_rules["byte"] > 200
    assert sum(rewrite.added_by_rules.values()) + 1 == len(rewrite.kept_ids)


def test_rewrite_validates_its_ids() -> None:
    assert TokenizerRewrite((0, 3, 7)).old_to_new() == {0: 0, 3: 1, 7: 2}
    for bad in ((3, 1), (1, 1), (-1, 2)):
        with pytest.raises(TokenizerError):
            TokenizerRewrite(bad)


def test_requested_ids_outside_the_embedding_are_errors_and_padding_rows_are_dropped(
        byte_level_tokenizer_dir: Path) -> None:
    size = len(Tokenizer.from_file(str(byte_level_tokenizer_dir / "tokenizer.json")).get_vocab())
    padded = plan_tokenizer(byte_level_tokenizer_dir, [5, size + 3], vocab_size=size + 10)
    assert 5 in padded.kept_ids and size + 3 not in padded.kept_ids
    for bad in ([size + 10], [-1], [True], ["7"]):
        with pytest.raises(TokenizerError, match="outside the model"):
            plan_tokenizer(byte_level_tokenizer_dir, bad, vocab_size=size + 10)
    with pytest.raises(TokenizerError, match="vocab_size"):
        plan_tokenizer(byte_level_tokenizer_dir, [5], vocab_size=0)


def test_required_token_beyond_a_smaller_embedding_is_an_error(byte_level_tokenizer_dir: Path) -> None:
    with pytest.raises(TokenizerError, match="beyond"):
        plan_tokenizer(byte_level_tokenizer_dir, [5], vocab_size=100)


def test_placeholders_are_dropped_unless_kept_on_purpose(spm_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_file(str(spm_dir / "tokenizer.json"))
    unused = {tok.token_to_id(f"<unused{i}>") for i in range(3)}
    plain = plan_tokenizer(spm_dir, [100])
    assert not unused & set(plain.kept_ids)
    assert {tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<pad>")} <= set(
        plain.kept_ids)
    reserved = plan_tokenizer(spm_dir, [100], keep_reserved=True)
    assert unused <= set(reserved.kept_ids) and reserved.added_by_rules["reserved"] == 3
    write_tokenizer(spm_dir, plain, tmp_path)
    listed = _json(tmp_path / "tokenizer_config.json")["extra_special_tokens"]
    assert listed == ["<|im_start|>", "<|im_end|>"]


def test_tokens_named_by_model_configs_are_kept(byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"eos_token_id": [1500, 1501], "text_config": {"bos_token_id": 1502},
                                                    "pad_token_id": None}))
    (folder / "generation_config.json").write_text(json.dumps({"forced_bos_token_id": 1503}))
    assert {1500, 1501, 1502, 1503} <= set(plan_tokenizer(folder, [7]).kept_ids)
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 99999}))
    with pytest.raises(TokenizerError, match="config.json.*eos_token_id"):
        plan_tokenizer(folder, [7])


def test_closure_follows_the_merge_bpe_actually_fires(tmp_path: Path) -> None:
    """'abc' has two merges; the lower-ranked ('a','bc') never fires, because 'ab' forms before 'bc'."""
    folder = _hand_made(tmp_path / "abc", ["a", "b", "c", "ab", "bc", "abc"],
                        [["a", "b"], ["b", "c"], ["a", "bc"], ["ab", "c"]])
    rewrite = plan_tokenizer(folder, [5])
    assert rewrite.kept_ids == (0, 1, 2, 3, 5)
    assert rewrite.added_by_rules == {"special": 0, "chat_template": 0, "alphabet": 3, "merge_closure": 1}
    write_tokenizer(folder, rewrite, tmp_path / "out")
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert new.encode("abc").ids == [4] and new.encode("bc").ids == [1, 2]
    assert _json(tmp_path / "out" / "tokenizer.json")["model"]["merges"] == [["a", "b"], ["ab", "c"]]


def test_closure_reaches_through_dropped_intermediates(tmp_path: Path) -> None:
    folder = _hand_made(tmp_path / "deep", ["h", "e", "l", "o", "he", "ll", "hell", "hello"],
                        [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"]])
    rewrite = plan_tokenizer(folder, [7])
    assert rewrite.kept_ids == tuple(range(8))
    assert rewrite.added_by_rules["merge_closure"] == 3


def test_unsupported_models_are_refused(tmp_path: Path) -> None:
    cases = {
        "WordPiece": models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"),
        "Unigram": models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0),
        "WordLevel": models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"),
    }
    for name, model in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        Tokenizer(model).save(str(folder / "tokenizer.json"))
        with pytest.raises(TokenizerError, match=f"tokenizer.json: uses a {name} model"):
            plan_tokenizer(folder, [1])


def test_word_piece_style_bpe_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cont"
    folder.mkdir()
    Tokenizer(models.BPE({"a": 0, "##b": 1}, [], continuing_subword_prefix="##")).save(str(folder / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="continuing_subword_prefix"):
        plan_tokenizer(folder, [0])


def test_planner_plans_many_keep_sets_like_plan_tokenizer(spm_dir: Path) -> None:
    planner = TokenizerPlanner(spm_dir)
    for request in ([5], list(range(0, 1500, 3)), list(range(1500))):
        assert planner.plan(request) == plan_tokenizer(spm_dir, request)
    assert planner.plan(range(1500)).kept_ids == tuple(range(1500))


def test_ignore_merges_tokenizers_stay_equivalent(byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "ignore")
    data = _json(folder / "tokenizer.json")
    data["model"]["ignore_merges"] = True
    (folder / "tokenizer.json").write_text(json.dumps(data))
    old = Tokenizer.from_file(str(folder / "tokenizer.json"))
    lines = corpus_lines()[:2000]
    counts: dict[int, int] = {}
    for e in old.encode_batch(lines):
        for i in e.ids:
            counts[i] = counts.get(i, 0) + 1
    rewrite = plan_tokenizer(folder, sorted(counts, key=lambda i: -counts[i])[:300])
    write_tokenizer(folder, rewrite, tmp_path / "out")
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    old_to_new = rewrite.old_to_new()
    same = 0
    for line, o, n in zip(lines, old.encode_batch(lines), new.encode_batch(lines)):
        if all(i in old_to_new for i in o.ids):
            assert n.ids == [old_to_new[i] for i in o.ids], line
            same += 1
        assert new.decode(n.ids) == line
    assert same > 100


def test_reserved_placeholders_are_recognised() -> None:
    from converter.tokenizer.named_tokens import is_reserved

    for token in ("<|reserved_special_token_250|>", "<unused0>", "<unused6241>", "[unused3]", "<|extra_204|>",
                  "<|placeholder6|>", "<|dummy_85|>", "[control_8]", "<SPECIAL_12>", "<extra_id_5>"):
        assert is_reserved(token), token
    for token in ("<unk>", "<|im_end|>", "<start_of_turn>", "<mask>", "<|endoftext|>", "<|fim_pad|>", "unused0",
                  "<unused>", "[multimodal]", "<|finetune_right_pad_id|>", "<|eot_id|>"):
        assert not is_reserved(token), token
