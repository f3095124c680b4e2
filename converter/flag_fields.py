"""How an options dataclass's field appears on the command line, stated once on the field itself.

The frozen options models (ScoreOptions, Budget, ExportOptions) carry their command-line
declaration in `dataclasses.field(metadata=...)`: help text, a flag name when it is not the
field's own name in kebab-case, choices, a parser for the value and the smallest value allowed.
converter.commands.flags turns these into argparse arguments for every command that takes the
options, so the one-shot command and the stage subcommands cannot drift apart (as mergekit's
`add_merge_options` does for its MergeOptions), while the modules that hold the data stay free
of argparse. A field that is not a user flag (an internal knob, a presentation switch set by the
command, provenance) says so with `internal()`; a field with neither is a mistake the flag
generator refuses. The value checks (`minimum`) run in the dataclass's `__post_init__`, so the
CLI and library callers get the same one-line error naming the flag.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from converter.errors import ConvertError

METADATA_KEY = "compact_convert_flag"


@dataclass(frozen=True)
class Flag:
    """The command-line side of one field. Two fields fed by one flag share one Flag object."""

    help: str
    name: str | None = None  # flag name without the leading dashes; default: the field name in kebab-case
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # str -> value; raises ValueError with a one-line message
    minimum: int | float | None = None
    metavar: str | None = None


def flag(default: Any, declared: Flag) -> Any:
    """A dataclass field with `default` that the CLI sets through `declared`."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: declared})


def internal(default: Any) -> Any:
    """A dataclass field with `default` that no command-line flag sets."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: None})


def flag_of(field: dataclasses.Field[Any]) -> Flag | None:
    """The field's Flag, or None for an internal field; a field that says neither is a programming error."""
    if METADATA_KEY not in field.metadata:
        raise TypeError(f"field {field.name!r} declares neither flag(...) nor internal(...)")
    declared = field.metadata[METADATA_KEY]
    return declared if isinstance(declared, Flag) else None


def flag_name(field: dataclasses.Field[Any], declared: Flag) -> str:
    """`--layer-by-layer` for a field named layerwise with name="layer-by-layer", else `--` + kebab-case."""
    return "--" + (declared.name or field.name.replace("_", "-"))


def check_minimums(options: Any) -> None:
    """Refuse a value below its flag's `minimum`, naming the flag (the same check for every command)."""
    for field in dataclasses.fields(options):
        declared = flag_of(field)
        value = getattr(options, field.name)
        if declared is None or declared.minimum is None or value is None or isinstance(value, bool):
            continue
        if value < declared.minimum:
            raise ConvertError(f"{flag_name(field, declared)} must be at least {declared.minimum}, got {value}")
