"""Scratch folders for module-scoped fixtures, removed when their module ends.

pytest keeps every `tmp_path_factory` folder until the session ends: a full run held 12 GB of
exported checkpoints at once, more than some CI machines have free. A module's fixtures make their
folders through `ModuleTmp` instead, so a run holds only the modules in flight.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


class ModuleTmp:
    """`mktemp` as on pytest's factory, remembering each folder so `remove_all` can drop them."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._made: list[Path] = []

    def mktemp(self, name: str) -> Path:
        folder = self._factory.mktemp(name)
        self._made.append(folder)
        return folder

    def remove_all(self) -> None:
        for folder in self._made:
            shutil.rmtree(folder, ignore_errors=True)
        self._made.clear()
