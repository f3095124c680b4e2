"""tokenizer.json parsed once, however many stages read it (between forks of the process).

A conversion reads the source tokenizer.json up to three times (the keep-set planner, the tokenizer
writer, the GGUF vocabulary); parsing a 151936-token file costs 0.2-0.6 s each time (profiled on the
Qwen2.5 tokenizer: `python -m tools.bench_rewrite_moe`), reading and hashing its bytes under 20 ms. So
the last file parsed is kept, keyed by its resolved path and the SHA-256 of its bytes: a file edited in
place, however fast, is parsed again, and the size limit is checked on every read. One file is kept
(about 90 MiB of Python objects for that tokenizer), and dropped before a fork; its readers must not modify
what they are given. The HF export forks its plot child after planning, so it still parses twice; the GGUF
export's vocabulary and tokenizer writer, both after the fork, share one parse.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from converter.io.jsonfile import parse_json_object, read_capped

_last: tuple[Path, bytes, dict[str, Any]] | None = None


def _forget() -> None:
    """Drop the kept parse before a fork (the report's plot child): shared copy-on-write, every page of it that
    the parent touched afterwards (reading changes reference counts) would be copied, adding up to the whole
    parse to the two processes' memory while the child lives (measured +55-90 MiB for the Qwen tokenizer)."""
    global _last
    _last = None


os.register_at_fork(before=_forget)


def read_shared_json(path: Path, max_bytes: int, what: str, missing: str) -> dict[str, Any]:
    """`path` parsed as a JSON object of at most `max_bytes` (ConvertError naming it otherwise), the same
    object as the previous call's when the file and its bytes are the same. Do not modify the result."""
    from converter.tokenizer.parsed import gc_paused  # parsed imports source, which imports this module

    global _last
    raw = read_capped(path, max_bytes, what, missing)
    key = (path.resolve(), hashlib.sha256(raw).digest())
    if _last is not None and (_last[0], _last[1]) == key:
        return _last[2]
    _last = None  # the previous file's objects go before this one is parsed
    with gc_paused():
        data = parse_json_object(raw, path, what)
    del raw
    _last = (*key, data)
    return data
