"""The `compact-convert` command: dispatch to a subcommand, print user errors as one line.

`compact-convert IN OUT ...` runs the whole job (converter.commands.convert); the stages are
subcommands (`score`, `plan`, `export`, `merge-scores`, `verify`) so a user can score once on a
GPU box and export many budgets elsewhere. Errors in the user's input print as one line on
stderr with exit status 2; Ctrl-C exits 130 after the staging folder has been removed.
"""
from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from converter.errors import ConvertError

SUBCOMMANDS = {
    "convert": "converter.commands.convert",
    "export": "converter.commands.convert",
    "score": "converter.commands.score",
    "plan": "converter.commands.plan",
    "merge-scores": "converter.commands.merge_scores",
    "verify": "converter.commands.verify",
}


def run(argv: Sequence[str]) -> int:
    name = argv[0] if argv and argv[0] in SUBCOMMANDS else "convert"
    rest = list(argv[1:]) if argv and argv[0] in SUBCOMMANDS else list(argv)
    try:
        module = importlib.import_module(SUBCOMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == SUBCOMMANDS[name]:
            raise ConvertError(f"subcommand '{name}' is not available in this version") from None
        raise
    return int(module.run(rest, prog=f"compact-convert {name}" if name != "convert" else "compact-convert"))


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the staging folder is removed on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return run(argv)
    except ConvertError as exc:
        print(f"compact-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compact-convert: interrupted; the staging folder was removed", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
