"""Imports run one way, down the layers of DESIGN.md: a module never imports one above it.

Every import statement counts, those inside functions and under TYPE_CHECKING included: an
import placed in a function to dodge a cycle is still a dependency. A new module must be given
a layer here, so the list stays complete.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("converter", "exporters")
# Lowest first. A module belongs to the longest prefix listed; modules of one layer may import
# each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("converter", "converter.errors", "converter.progress", "converter.readahead"),
    ("converter.io",),
    ("converter.arch",),
    ("converter.plan", "converter.ffn_refit"),
    ("converter.source",),
    ("converter.tokenizer", "converter.prune"),
    ("converter.settle",),
    ("converter.score",),
    ("exporters",),
    ("converter.report", "converter.verify"),
    ("converter.pipeline", "converter.oneshot"),
    ("converter.commands",),
    ("converter.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a converter/exporters module in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            # `from converter import plan` imports the module converter.plan.
            names += [f"{node.module}.{a.name}" for a in node.names if layer_of(f"{node.module}.{a.name}") is not None
                      and (ROOT / Path(*f"{node.module}.{a.name}".split("."))).with_suffix(".py").exists()]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path)
            own = layer_of(module)
            if own is None:
                problems.append(f"{module}: not in any layer of tests/test_layering.py; add it")
                continue
            for line, imported in project_imports(path):
                other = layer_of(imported)
                if other is not None and other > own:
                    problems.append(f"{path.relative_to(root)}:{line}: {module} (layer {own}) imports {imported} "
                                    f"(layer {other}), which lies above it")
    return problems


def test_imports_run_one_way() -> None:
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_an_upward_import_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a low module that imports the pipeline is named."""
    low = ROOT / "converter" / "io" / "jsonfile.py"
    original = low.read_text(encoding="utf-8")
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: original + "\n\ndef _late():\n    from converter.pipeline import export\n"
                        if self == low else Path.read_bytes(self).decode("utf-8"))
    problems = upward_imports()
    assert any("converter.io.jsonfile (layer 1) imports converter.pipeline" in p for p in problems), problems


def test_every_layer_names_a_real_module() -> None:
    for prefixes in LAYERS:
        for prefix in prefixes:
            as_path = ROOT / Path(*prefix.split("."))
            assert as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file(), prefix
