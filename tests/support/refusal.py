"""A bad-input case and what every refusal must show: exit 2, one line naming the file, nothing written.

Shared by the catalogues of bad model folders (test_bad_input.py) and bad tokenizer files
(test_bad_tokenizer.py); both run the real CLI entry point in-process.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from converter.cli import main

Breaker = Callable[[Path, Path], None]  # (model folder, plan path) -> None


@dataclass(frozen=True)
class Case:
    id: str
    breaker: Breaker
    expect: str  # a fragment the message must contain
    names: str  # the file (or folder) name the message must name
    extra_args: tuple[str, ...] = ()
    tokenizer: str | None = None  # "bpe" or "spm": start from a model with that tokenizer
    drops_tokens: bool = True  # with a tokenizer: the plan drops tokens (else it keeps every one)


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()  # only what the CLI prints (building the model may have printed progress)
    code = main(args)
    return code, capsys.readouterr().err


def assert_refused(case: Case, model: Path, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case.breaker(model, plan)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli([str(model), str(out), "--plan", str(plan), "--no-progress", *case.extra_args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert case.expect in lines[0] and case.names in lines[0], lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
