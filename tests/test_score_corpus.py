"""Corpus reading, token ranking and buckets: the pieces of scoring that need no model.

Every bad corpus the issue lists raises a one-line ConvertError naming the file (and the line);
the tokenizer prior breaks count ties by BPE merge order; bucket weights reduce to plain act²
when every token is kept and to kept/not-kept masks otherwise.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from converter.errors import ConvertError
from converter.score.buckets import BucketLayout, bucket_weights, log_edges
from converter.score.corpus import DEFAULT_NAME, open_corpus
from converter.score.tokens import plausible_tokens, rank_tokens, token_pieces, token_prior, token_ranking


def docs(paths: list[Path], field: str = "text") -> list[str]:
    return [d.text for d in open_corpus(paths, field).documents()]


def test_txt_jsonl_and_folders_stream_in_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first paragraph\n\nsecond\n", encoding="utf-8")
    (tmp_path / "a" / "two.jsonl").write_text(json.dumps({"text": "json doc"}) + "\n\n"
                                              + json.dumps({"text": "  "}) + "\n", encoding="utf-8")
    (tmp_path / "a" / "skip.bin").write_bytes(b"\xff\x00")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "other field", "text": 3}) + "\n", encoding="utf-8")
    assert docs([tmp_path / "a"]) == ["first paragraph\n\nsecond\n", "json doc"]
    assert docs([tmp_path / "b.jsonl"], "body") == ["other field"]


def test_long_text_is_cut_at_paragraphs(tmp_path: Path) -> None:
    para = "word " * 300 + "\n"
    (tmp_path / "book.txt").write_text((para + "\n") * 20, encoding="utf-8")
    pieces = docs([tmp_path / "book.txt"])
    assert len(pieces) > 3
    assert "".join(pieces) == (para + "\n") * 20
    assert all(p.endswith("\n\n") for p in pieces[:-1])


def test_default_corpus_is_pydoc_topics() -> None:
    corpus = open_corpus(None)
    assert corpus.is_default and corpus.describe() == DEFAULT_NAME
    first = next(iter(corpus.documents()))
    assert first.origin.startswith(DEFAULT_NAME) and first.text.strip()


@pytest.mark.parametrize("content,field,message", [
    (b"good line\nbad \xff\xfe line\n", "text", "line 2 is not UTF-8"),
    (b'{"text": "ok"}\n{"title": "no text"}\n', "text", "line 2 has no 'text' field"),
    (b'{"text": "ok"}\nnot json\n', "text", "line 2 is not valid JSON"),
    (b'["a list"]\n', "text", "line 1 is not a JSON object"),
    (b'{"text": 5}\n', "text", "field 'text' is int"),
    (b"text\x00with nul\n", "text", "line 1 contains NUL bytes"),
])
def test_bad_corpus_lines_name_file_and_line(tmp_path: Path, content: bytes, field: str, message: str) -> None:
    path = tmp_path / ("bad.jsonl" if content.startswith((b"{", b"[")) else "bad.txt")
    path.write_bytes(content)
    with pytest.raises(ConvertError) as err:
        docs([path], field)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


@pytest.mark.parametrize("make", ["empty-file", "blank-file", "empty-folder", "missing"])
def test_empty_or_missing_corpus_is_refused(tmp_path: Path, make: str) -> None:
    target = tmp_path / "corpus.txt"
    if make == "empty-file":
        target.write_text("")
    elif make == "blank-file":
        target.write_text("\n  \n\t\n")
    elif make == "empty-folder":
        target = tmp_path / "folder"
        target.mkdir()
    with pytest.raises(ConvertError) as err:
        docs([target])
    assert str(target) in str(err.value)


def test_prior_breaks_count_ties_by_merge_rank(tmp_path: Path) -> None:
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5}
    merges = ["b c", "a b", "ab c"]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab,
                                                                    "merges": merges}}), encoding="utf-8")
    prior = token_prior(tmp_path, 7)
    assert prior.tolist() == [0, 1, 2, 4, 5, 3, 6]
    counts = np.array([0, 0, 0, 0, 0, 0, 0])
    assert rank_tokens(counts, prior).tolist() == [0, 1, 2, 5, 3, 4, 6]
    counts = np.array([0, 0, 0, 0, 9, 0, 9])
    assert rank_tokens(counts, prior).tolist() == [4, 6, 0, 1, 2, 5, 3]


def test_unseen_tokens_of_unseen_characters_rank_after_plausible_ones(tmp_path: Path) -> None:
    """A never-counted token whose characters the corpus never produced ranks below every
    plausible never-counted one, whatever its prior; counted tokens keep their count order."""
    pieces = [["<unk>", 0.0], ["▁a", -1.0], ["б", -1.5], ["▁бб", -2.0], ["b", -2.5], ["▁ab", -3.0], ["▁c", -4.0]]
    data = {"model": {"type": "Unigram", "vocab": pieces},
            "added_tokens": [{"id": 7, "content": "<extra>", "special": True}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert token_pieces(tmp_path, 9) == ["<unk>", "▁a", "б", "▁бб", "b", "▁ab", "▁c", "<extra>", ""]
    counts = np.array([0, 5, 0, 0, 2, 0, 0, 0, 0])
    plausible = plausible_tokens(token_pieces(tmp_path, 9), counts)
    assert plausible.tolist() == [False, True, False, False, True, True, False, False, False]
    prior = token_prior(tmp_path, 9)
    assert rank_tokens(counts, prior).tolist() == [1, 4, 0, 2, 3, 5, 6, 7, 8]
    assert token_ranking(tmp_path, counts).tolist() == [1, 4, 5, 0, 2, 3, 6, 7, 8]


def test_predicted_counts_rank_never_counted_tokens_before_plausibility_and_prior(tmp_path: Path) -> None:
    """Counted tokens keep their count order; among the never-counted, the model's predicted counts
    decide first (even for an implausible piece), then plausibility, then the prior."""
    pieces = [["<unk>", 0.0], ["▁a", -1.0], ["б", -1.5], ["▁бб", -2.0], ["b", -2.5], ["▁ab", -3.0], ["▁c", -4.0]]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": pieces}}),
                                             encoding="utf-8")
    counts = np.array([0, 5, 0, 0, 2, 0, 0])
    predicted = np.array([0.0, 0.1, 0.0, 0.4, 9.0, 0.0, 0.2])
    assert token_ranking(tmp_path, counts, predicted).tolist() == [1, 4, 3, 6, 5, 0, 2]
    assert token_ranking(tmp_path, counts).tolist() == [1, 4, 5, 0, 2, 3, 6]


def test_unigram_prior_follows_piece_scores(tmp_path: Path) -> None:
    pieces = [["<unk>", 0.0], ["x", -5.0], ["y", -1.0], ["z", -3.0]]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": pieces}}))
    assert token_prior(tmp_path, 4).tolist() == [0, 3, 1, 2]


def test_buckets_are_log_spaced_and_weights_follow_the_kept_mass() -> None:
    edges = log_edges(1000, 4)
    assert edges[:6] == (0, 1, 2, 3, 4, 5) and edges[-1] == 1000
    ratios = [b / a for a, b in itertools.pairwise(edges[8:])]
    assert max(ratios) < 1.3
    order = np.arange(1000)[::-1]
    layout = BucketLayout.from_ranking(order, 4)
    assert layout.token_bucket[999] == 0 and layout.token_bucket[0] == layout.buckets - 1
    counts = np.arange(1000, dtype=np.int64)
    assert np.allclose(bucket_weights(layout, counts, None), (np.bincount(layout.token_bucket, counts) > 0))
    kept = np.arange(500, 1000)
    w = bucket_weights(layout, counts, kept)
    rank_of_500 = 499
    for b in range(layout.buckets):
        lo, hi = edges[b], edges[b + 1]
        if hi <= rank_of_500 + 1:
            assert w[b] == 1.0
        elif lo > rank_of_500:
            assert w[b] == 0.0
    focused = bucket_weights(layout, counts, None, focus=1.0)
    assert focused[0] == 1.0 and np.all(np.diff(focused[1:]) <= 1e-12)


def test_merge_rankings_gives_the_general_ranking_its_share_of_every_prefix() -> None:
    from converter.score.tokens import merge_rankings

    domain, general = np.arange(10), np.arange(10)[::-1].copy()
    assert merge_rankings(domain, general, 0.0).tolist() == domain.tolist()
    assert merge_rankings(domain, general, 1.0).tolist() == general.tolist()
    assert merge_rankings(domain, general, 0.5).tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    merged = merge_rankings(domain, general, 0.3).tolist()
    assert merged[:5] == [0, 9, 1, 2, 8]  # about 0.7 of a prefix from the domain, 0.3 from the general ranking
    assert [t for t in merged if t < 5] == [0, 1, 2, 3, 4]  # each ranking's own order is kept
