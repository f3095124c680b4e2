"""converter.tokenizer.write_tokenizer and remap_special_ids: every file, every id, every refusal."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer

from converter.tokenizer import TokenizerError, plan_tokenizer, remap_special_ids, write_tokenizer
from tests.support.tiny_tokenizers import corpus_lines


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _frequent(folder: Path, n: int) -> list[int]:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    counts: dict[int, int] = {}
    for e in tok.encode_batch(corpus_lines()[:1500], add_special_tokens=False):
        for i in e.ids:
            counts[i] = counts.get(i, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))[:n]


def test_writes_every_file_with_consistent_ids(spm_dir: Path, tmp_path: Path) -> None:
    folder = _copy(spm_dir, tmp_path / "m")
    sample = b"\x0a\x05hello\x12\x0bstale-split"
    self_test = b"\x0a" + bytes([len(sample)]) + sample
    with (folder / "tokenizer.model").open("ab") as f:
        f.write(b"\x22" + bytes([len(self_test)]) + self_test)
    rewrite = plan_tokenizer(folder, _frequent(folder, 200))
    written = write_tokenizer(folder, rewrite, tmp_path / "out")
    assert sorted(p.name for p in written) == ["chat_template.jinja", "tokenizer.json", "tokenizer.model",
                                               "tokenizer_config.json"]
    out = tmp_path / "out"
    assert (out / "chat_template.jinja").read_bytes() == (spm_dir / "chat_template.jinja").read_bytes()
    data = _json(out / "tokenizer.json")
    old = Tokenizer.from_file(str(spm_dir / "tokenizer.json"))
    assert len(data["model"]["vocab"]) == len(rewrite.kept_ids)
    for new_id, old_id in enumerate(rewrite.kept_ids):
        assert data["model"]["vocab"][old.id_to_token(old_id)] == new_id
    assert [t["id"] for t in data["added_tokens"]] == sorted(rewrite.old_to_new()[t] for t in (0, 1, 2, 3, 4, 5))
    bos = data["post_processor"]["special_tokens"]["<s>"]["ids"]
    assert bos == [rewrite.old_to_new()[1]]
    proto = pb.ModelProto()
    proto.ParseFromString((out / "tokenizer.model").read_bytes())
    assert [p.piece for p in proto.pieces] == [old.id_to_token(i) for i in rewrite.kept_ids]
    assert proto.trainer_spec.vocab_size == len(rewrite.kept_ids)
    assert b"stale-split" not in (out / "tokenizer.model").read_bytes()


def test_added_tokens_decoder_and_added_tokens_json_are_renumbered(byte_level_tokenizer_dir: Path,
                                                                   tmp_path: Path) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "m")
    old = Tokenizer.from_file(str(folder / "tokenizer.json"))
    (folder / "added_tokens.json").write_text(json.dumps({"<|im_end|>": old.token_to_id("<|im_end|>")}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    rewrite = plan_tokenizer(folder, list(range(300, 900)))
    write_tokenizer(folder, rewrite, tmp_path / "out")
    m = rewrite.old_to_new()
    decoder = _json(tmp_path / "out" / "tokenizer_config.json")["added_tokens_decoder"]
    assert {int(k): v["content"] for k, v in decoder.items()} == {
        m[old.token_to_id(t)]: t for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert _json(tmp_path / "out" / "added_tokens.json") == {"<|im_end|>": m[old.token_to_id("<|im_end|>")]}
    assert _json(tmp_path / "out" / "special_tokens_map.json") == {"eos_token": "<|im_end|>"}
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded.convert_tokens_to_ids("<|im_end|>") == m[old.token_to_id("<|im_end|>")]


@pytest.mark.parametrize("as_strings", [False, True])
def test_both_merge_spellings_round_trip_in_their_own_spelling(byte_level_tokenizer_dir: Path, tmp_path: Path,
                                                               as_strings: bool) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "m")
    data = _json(folder / "tokenizer.json")
    if as_strings:
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    rewrite = plan_tokenizer(folder, _frequent(folder, 400))
    write_tokenizer(folder, rewrite, tmp_path / "out")
    merges = _json(tmp_path / "out" / "tokenizer.json")["model"]["merges"]
    assert merges and all(isinstance(m, str) == as_strings for m in merges)
    kept = set(_json(tmp_path / "out" / "tokenizer.json")["model"]["vocab"])
    pairs = [m.split(" ") if as_strings else m for m in merges]
    assert all(a in kept and b in kept and a + b in kept for a, b in pairs)
    old = Tokenizer.from_file(str(folder / "tokenizer.json"))
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    m = rewrite.old_to_new()
    for line in corpus_lines()[:300]:
        ids = old.encode(line).ids
        if all(i in m for i in ids):
            assert new.encode(line).ids == [m[i] for i in ids]


@pytest.mark.parametrize("kind", ["bert", "roberta", "sequence"])
def test_post_processor_ids_are_remapped(byte_level_tokenizer_dir: Path, tmp_path: Path, kind: str) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "m")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sep, cls = ("<|im_end|>", tok.token_to_id("<|im_end|>")), ("<|im_start|>", tok.token_to_id("<|im_start|>"))
    template = processors.TemplateProcessing(single="<|im_start|> $A <|im_end|>", special_tokens=[cls, sep])
    tok.post_processor = {
        "bert": processors.BertProcessing(sep, cls), "roberta": processors.RobertaProcessing(sep, cls),
        "sequence": processors.Sequence([processors.ByteLevel(trim_offsets=False), template]),
    }[kind]
    tok.enable_padding(pad_id=tok.token_to_id("<|endoftext|>"), pad_token="<|endoftext|>")
    tok.save(str(folder / "tokenizer.json"))
    rewrite = plan_tokenizer(folder, list(range(500, 700)))
    write_tokenizer(folder, rewrite, tmp_path / "out")
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    m = rewrite.old_to_new()
    ids = new.encode("hello").ids
    assert ids[0] == m[cls[1]] and ids[-1] == m[sep[1]]
    assert new.padding["pad_id"] == m[tok.token_to_id("<|endoftext|>")]


def test_unknown_post_processor_is_refused(byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy(byte_level_tokenizer_dir, tmp_path / "m")
    data = _json(folder / "tokenizer.json")
    data["post_processor"] = {"type": "FancyIds", "ids": [1, 2]}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="post_processor type 'FancyIds'"):
        plan_tokenizer(folder, [5])


def test_bad_files_are_refused_with_their_name(spm_dir: Path, byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    missing.mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.json: is missing"):
        plan_tokenizer(missing, [1])
    broken = _copy(byte_level_tokenizer_dir, tmp_path / "broken")
    (broken / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: cannot be parsed"):
        plan_tokenizer(broken, [1])
    (broken / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="tokenizer_config.json: is not a JSON object"):
        plan_tokenizer(broken, [1])
    rewrite = plan_tokenizer(spm_dir, [50])
    for name, content in {"garbage": b"\xff\xfe not a protobuf \x00\x01", "empty": b"",
                          "tiktoken": b"IQ== 0\nIg== 1\n"}.items():
        folder = _copy(spm_dir, tmp_path / name)
        (folder / "tokenizer.model").write_bytes(content)
        with pytest.raises(TokenizerError, match="tokenizer.model: is not a"):
            write_tokenizer(folder, rewrite, tmp_path / f"{name}-out")
    shuffled = _copy(spm_dir, tmp_path / "shuffled")
    proto = pb.ModelProto()
    proto.ParseFromString((spm_dir / "tokenizer.model").read_bytes())
    proto.pieces[300].piece, proto.pieces[301].piece = proto.pieces[301].piece, proto.pieces[300].piece
    (shuffled / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match="piece 300 .* describe different tokenizers"):
        plan_tokenizer(shuffled, [50])
    unigram = _copy(spm_dir, tmp_path / "unigram")
    proto.ParseFromString((spm_dir / "tokenizer.model").read_bytes())
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    (unigram / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match="UNIGRAM model"):
        plan_tokenizer(unigram, [50])


def test_write_refuses_ids_the_tokenizer_does_not_have(byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    from converter.tokenizer import TokenizerRewrite

    with pytest.raises(TokenizerError, match="no token"):
        write_tokenizer(byte_level_tokenizer_dir, TokenizerRewrite((0, 1, 2, 99999)), tmp_path)


def test_rewritten_sentencepiece_model_loads_and_matches(spm_dir: Path, tmp_path: Path) -> None:
    rewrite = plan_tokenizer(spm_dir, _frequent(spm_dir, 300))
    write_tokenizer(spm_dir, rewrite, tmp_path / "out")
    old = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    assert new.unk_id() == rewrite.old_to_new()[old.unk_id()]
    assert new.bos_id() == rewrite.old_to_new()[old.bos_id()]
    m = rewrite.old_to_new()
    lines = corpus_lines()[:2000]
    same = 0
    for o, n in zip(old.encode(lines), new.encode(lines), strict=True):
        if all(i in m for i in o):
            assert n == [m[i] for i in o]
            same += 1
        assert new.decode(n) == old.decode(o)
    assert same > 100


def test_remap_special_ids() -> None:
    config = {"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": None, "sep_token_id": -1,
              "text_config": {"decoder_start_token_id": 7}, "suppress_tokens": [2, 9], "vocab_size": 10,
              "use_cache": True}
    out = remap_special_ids(config, {1: 0, 2: 1, 7: 2})
    assert out == {"bos_token_id": 0, "eos_token_id": [1, 2], "pad_token_id": None, "sep_token_id": -1,
                   "text_config": {"decoder_start_token_id": 2}, "suppress_tokens": [1], "vocab_size": 10,
                   "use_cache": True}
    assert config["eos_token_id"] == [2, 7]
    with pytest.raises(TokenizerError, match="'eos_token_id' is 7, a token the pruned vocabulary drops"):
        remap_special_ids(config, {1: 0, 2: 1})
    with pytest.raises(TokenizerError, match="generation_config.json: 'bad_words_ids'"):
        remap_special_ids({"bad_words_ids": [[1, 2]]}, {1: 0, 2: 1}, where="generation_config.json")
    with pytest.raises(TokenizerError, match="expected a token id"):
        remap_special_ids({"eos_token_id": "2"}, {2: 0})
