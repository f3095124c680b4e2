"""converter.tokenizer.shared_json: tokenizer.json parsed once a run, re-read whenever its bytes change."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from converter.errors import ConvertError
from converter.tokenizer import plan_tokenizer, write_tokenizer
from converter.tokenizer.shared_json import read_shared_json
from converter.tokenizer.source import read_source
from exporters.gguf.vocab import read_tokenizer_json

LIMIT = 1 << 30


def _read(path: Path, limit: int = LIMIT) -> dict:
    return read_shared_json(path, limit, "a tokenizer.json", "is missing")


def test_every_reader_of_one_run_gets_the_same_parse(byte_level_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(byte_level_tokenizer_dir, tmp_path / "m")
    path = folder / "tokenizer.json"
    first = read_source(folder).tokenizer_json
    assert first == json.loads(path.read_text(encoding="utf-8"))
    rewrite = plan_tokenizer(folder, list(range(300)))
    written = write_tokenizer(folder, rewrite, tmp_path / "out")
    assert read_source(folder).tokenizer_json is first  # the planner and the writer read the same object
    assert read_tokenizer_json(folder) is first  # and so does the GGUF vocabulary
    out = json.loads((tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8"))
    assert tmp_path / "out" / "tokenizer.json" in written and len(out["model"]["vocab"]) == len(rewrite.kept_ids)
    assert _read(tmp_path / "out" / "tokenizer.json") == out  # another file is parsed, not the cached one


def test_a_file_rewritten_in_place_with_the_same_size_and_time_is_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"vocab": {"a": 0}}}', encoding="utf-8")
    stat = path.stat()
    first = _read(path)
    path.write_text('{"model": {"vocab": {"b": 0}}}', encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = _read(path)
    assert first["model"]["vocab"] == {"a": 0} and second["model"]["vocab"] == {"b": 0}


def test_the_size_limit_and_the_folder_links_are_checked_on_every_read(byte_level_tokenizer_dir: Path,
                                                                        tmp_path: Path) -> None:
    outside = byte_level_tokenizer_dir / "tokenizer.json"
    size = outside.stat().st_size
    assert _read(outside) is _read(outside)
    with pytest.raises(ConvertError, match=rf"implausibly large for a tokenizer.json \({size:,} bytes\)"):
        _read(outside, size - 1)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ConvertError, match="tokenizer.json: is a link that leads outside the model folder"):
        read_source(folder)


def test_a_fork_drops_the_kept_parse(byte_level_tokenizer_dir: Path) -> None:
    """The report's plot child is forked: a parse shared with it would be copied page by page as the parent reads."""
    path = byte_level_tokenizer_dir / "tokenizer.json"
    first = _read(path)
    assert _read(path) is first
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    again = _read(path)
    assert again is not first and again == first
