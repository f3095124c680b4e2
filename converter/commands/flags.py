"""argparse arguments generated from the options dataclasses, and the dataclasses built back from them.

Every scoring, budget and export flag is declared once, on the field of the frozen options model
it fills (converter.flag_fields): `add_options` adds a model's fields to any parser or argument
group, `options_from` builds the model from the parsed namespace. A flag that feeds two models
(--device, --layer-by-layer, --refit) is added by whichever model comes first and fills both. So
`compact-convert IN OUT`, `score` and `plan` take the same flags with the same defaults and
checks, as mergekit's `add_merge_options` keeps its scripts in step. The few flags that belong to
no model (the calibration text, progress bars) are declared here, once, for the commands that
take them.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from converter.flag_fields import Flag, flag_name, flag_of

T = TypeVar("T")
Container = argparse.ArgumentParser | argparse._ArgumentGroup


def dest_of(field: dataclasses.Field[Any], declared: Flag) -> str:
    """The namespace attribute a field's flag stores into: `--layer-by-layer` -> layer_by_layer."""
    return flag_name(field, declared)[2:].replace("-", "_")


def _value_type(cls: type, field: dataclasses.Field[Any]) -> type:
    """int for `int` and `int | None`; the one concrete type a flag's value can have."""
    hint = typing.get_type_hints(cls)[field.name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    concrete = [a for a in args if a is not type(None)]
    if len(concrete) != 1 or concrete[0] not in (bool, int, float, str):
        raise TypeError(f"{cls.__name__}.{field.name}: a flag needs a bool, int, float or str field, not {hint}")
    return concrete[0]


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser raising ValueError, as argparse wants it: its message in the usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def add_options(container: Container, cls: type, exclude: Collection[str] = ()) -> None:
    """Add a flag for every user-facing field of the options dataclass `cls`, except the fields in `exclude`.

    Booleans become `--x/--no-x`; other fields take their type from the annotation, and their
    help, choices, flag name and value parser from the field's Flag. A flag already in the parser
    (one fed by two models) is not added twice.
    """
    for field in dataclasses.fields(cls):
        declared = flag_of(field)
        if declared is None or field.name in exclude:
            continue
        name, dest = flag_name(field, declared), dest_of(field, declared)
        existing = container._option_string_actions.get(name)
        if existing is not None:
            if existing.dest != dest or existing.default != field.default:
                raise TypeError(f"{cls.__name__}.{field.name}: {name} is already declared with another meaning")
            continue
        kwargs: dict[str, Any] = {"dest": dest, "default": field.default, "help": declared.help}
        if _value_type(cls, field) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argparse_type(declared.parse) if declared.parse else _value_type(cls, field)
            if declared.choices is not None:
                kwargs["choices"] = declared.choices
            if declared.metavar is not None:
                kwargs["metavar"] = declared.metavar
        container.add_argument(name, **kwargs)


def options_from(namespace: argparse.Namespace, cls: type[T], **values: Any) -> T:
    """The options dataclass `cls` filled from the flags `add_options` declared (the rest keep their
    defaults) and from `values` for fields no flag sets; its value checks run here."""
    found: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        declared = flag_of(field)
        if declared is not None and hasattr(namespace, dest_of(field, declared)):
            found[field.name] = getattr(namespace, dest_of(field, declared))
    return cls(**found, **values)


def add_corpus_flags(container: Container) -> None:
    """--calib and --text-field: the calibration text of `score` and of the one-shot command."""
    container.add_argument("--calib", type=Path, action="append", metavar="PATH",
                           help="calibration text: .txt, .jsonl or a folder of them, repeatable. USE TEXT OF YOUR OWN "
                           "DOMAIN: it decides which tokens survive (default: Python's docs, with a warning)")
    container.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")


def add_progress_flag(container: Container) -> None:
    container.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                           help="show progress bars")
