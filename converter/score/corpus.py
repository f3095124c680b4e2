"""Calibration corpora: local text files, JSONL records and folders of them, read as a stream.

A corpus is a list of paths. `.jsonl` files give one document per line (the `text` field, or
another one named by `--text-field`); every other file is plain UTF-8 text, cut into documents
of a few thousand characters at paragraph boundaries so a book never sits in memory whole.
Folders are searched recursively for `*.txt` and `*.jsonl`. Bad input (not UTF-8, a JSONL line
that is not an object or lacks the field, no text at all) raises ConvertError naming the file and
line. When no paths are given the built-in default is general: the calibration text is the dense
model's own answers to the general probe's calib prompts (converter.score.probe_scoring), 192
prompts of up to 96 tokens. Python's reference documentation (`pydoc_data.topics`, shipped with
CPython, about 110k tokens, present offline everywhere) followed them until issue 24's
measurements, and is still the text when the probe cannot run (layer-by-layer or --counts-only
scoring): on SmolLM2 at -20% (31244 tokens, FFN 1216) the answers alone, against 48 answers
followed by pydoc, took the held-out everyday answers from 2.79x to 2.35x the dense model's bits per
byte and from "The capital of France is France." back to "... is Paris.", since the docs spent
kept tokens and the FFN ranking on Python prose. Callers still warn: a model meant for one domain
should be calibrated on that domain's text.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConvertError

DOC_CHARS = 4000
FOLDER_PATTERNS = ("*.txt", "*.jsonl")
DEFAULT_NAME = "builtin:pydoc_data.topics"
DEFAULT_KEEPS_PYDOC = False
DEFAULT_WARNING = (
    "no --calib given: calibrating for general use, on the model's own answers to the built-in general "
    "probe (everyday chat prompts; Python's reference documentation, pydoc_data.topics, where the model "
    "cannot answer them). Vocabulary "
    "pruning depends on the calibration domain more than on anything else; if the model will see text "
    "of one kind, pass it with --calib FILE_OR_FOLDER")


@dataclass(frozen=True)
class Document:
    """One unit of calibration text and where it came from (file:line)."""

    text: str
    origin: str


@dataclass(frozen=True)
class Corpus:
    """The files of a corpus (empty means the built-in default) and how to read them."""

    files: tuple[Path, ...]
    text_field: str = "text"

    @property
    def is_default(self) -> bool:
        return not self.files

    def describe(self) -> str:
        if self.is_default:
            return DEFAULT_NAME
        shown = ", ".join(str(f) for f in self.files[:3])
        more = f" and {len(self.files) - 3} more files" if len(self.files) > 3 else ""
        return shown + more

    def documents(self) -> Iterator[Document]:
        """Every document in order; raises ConvertError if the corpus holds no text at all."""
        found = False
        source = _default_documents() if self.is_default else (
            doc for f in self.files for doc in read_file(f, self.text_field))
        for doc in source:
            found = True
            yield doc
        if not found:
            raise ConvertError("the calibration corpus contains no text; pass a file with some text in it",
                               self.describe())


def open_corpus(paths: Sequence[Path] | None, text_field: str = "text") -> Corpus:
    """Resolve files and folders into a Corpus; nothing is read yet beyond the directory listing."""
    files: list[Path] = []
    for path in paths or ():
        path = Path(path)
        if path.is_dir():
            found = sorted({f for pattern in FOLDER_PATTERNS for f in path.rglob(pattern) if f.is_file()})
            if not found:
                raise ConvertError("folder holds no .txt or .jsonl files to calibrate on", path)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConvertError("calibration text does not exist", path)
    if not text_field:
        raise ConvertError("--text-field must name a JSON field, e.g. text")
    return Corpus(tuple(files), text_field)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ConvertError(f"line {number} is not UTF-8 text; calibration text must be UTF-8 "
                                       "(convert it, e.g. with iconv)", path) from None
                if "\x00" in line:
                    raise ConvertError(f"line {number} contains NUL bytes; this looks like a binary file, "
                                       "not text", path)
                yield number, line
    except OSError as exc:
        raise ConvertError(f"cannot be read ({exc.strerror or exc})", path) from exc


def read_file(path: Path, text_field: str = "text") -> Iterator[Document]:
    """The documents of one file, streamed line by line."""
    if path.suffix.lower() == ".jsonl":
        yield from _read_jsonl(path, text_field)
    else:
        yield from split_text(_decoded_lines(path), str(path))


def split_text(lines: Iterator[tuple[int, str]], name: str, max_chars: int = DOC_CHARS) -> Iterator[Document]:
    """Group lines into documents of about max_chars, cut at blank lines (hard cut at twice that)."""
    parts: list[str] = []
    size = 0
    start = 1
    for number, line in lines:
        if not parts:
            start = number
        parts.append(line)
        size += len(line)
        if (size >= max_chars and not line.strip()) or size >= 2 * max_chars:
            text = "".join(parts)
            if text.strip():
                yield Document(text, f"{name}:{start}")
            parts, size = [], 0
    text = "".join(parts)
    if text.strip():
        yield Document(text, f"{name}:{start}")


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConvertError(f"line {number} is not valid JSON ({exc})", path) from None
        if not isinstance(record, dict):
            raise ConvertError(f"line {number} is not a JSON object with a '{text_field}' field", path)
        if text_field not in record:
            keys = ", ".join(sorted(map(str, record))[:5]) or "none"
            raise ConvertError(f"line {number} has no '{text_field}' field (its fields: {keys}); name the text "
                               "field with --text-field", path)
        text = record[text_field]
        if not isinstance(text, str):
            raise ConvertError(f"line {number}: field '{text_field}' is {type(text).__name__}, not a string", path)
        if text.strip():
            yield Document(text, f"{path}:{number}")


def _default_documents() -> Iterator[Document]:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    for key in sorted(topics):
        lines = enumerate(topics[key].splitlines(keepends=True), start=1)
        yield from split_text(lines, f"{DEFAULT_NAME}[{key}]")
