"""Token ids inside config.json and generation_config.json, found and renumbered.

Fields ending in `_token_id`, `_token_ids` or `_token_index` (bos, eos — possibly a list —, pad,
decoder_start, forced_bos, a multimodal model's image/boi/eoi tokens, ...) at any depth, so nested
configs such as `text_config` are covered. A negative id is a "none" sentinel and is left alone.
Generation's suppress lists are filtered (a token that no longer exists needs no suppressing);
fields that hold id sequences this module cannot renumber faithfully are refused.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from converter.tokenizer.errors import TokenizerError

ID_SUFFIXES = ("_token_id", "_token_ids", "_token_index")  # _token_index: multimodal configs (image_token_index)
FILTERED_LISTS = ("suppress_tokens", "begin_suppress_tokens")
UNSUPPORTED = ("forced_decoder_ids", "bad_words_ids", "sequence_bias", "force_words_ids")


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(key: str, value: object, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    if value is None or all(_is_id(v) for v in items):
        return
    raise TokenizerError(f"'{key}' is {value!r}; expected a token id, a list of ids or null", where)


def config_token_ids(config: Mapping[str, Any], where: Path | str = "config.json") -> Iterator[tuple[str, int]]:
    """(key, id) for every non-negative special-token id the config names, at any depth."""
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from config_token_ids(value, where)
        elif key.endswith(ID_SUFFIXES):
            _check_value(key, value, str(where))
            for v in value if isinstance(value, list) else [value]:
                if v is not None and v >= 0:
                    yield key, v


def _remap_one(key: str, value: int | None, old_to_new: Mapping[int, int], where: str) -> int | None:
    if value is None or value < 0:
        return value
    if value not in old_to_new:
        raise TokenizerError(f"'{key}' is {value}, a token the pruned vocabulary drops; keep it in the plan "
                             "(plan_tokenizer adds every id the configs name)", where)
    return old_to_new[value]


def remap_special_ids(config: dict[str, Any], old_to_new: Mapping[int, int], *,
                      where: Path | str = "config.json") -> dict[str, Any]:
    """A copy of `config` with every special-token id translated to the pruned vocabulary."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out[key] = remap_special_ids(dict(value), old_to_new, where=where)
        elif key.endswith(ID_SUFFIXES):
            _check_value(key, value, str(where))
            out[key] = ([_remap_one(key, v, old_to_new, str(where)) for v in value] if isinstance(value, list)
                        else _remap_one(key, value, old_to_new, str(where)))
        elif key in FILTERED_LISTS and isinstance(value, list):
            out[key] = [old_to_new[v] for v in value if _is_id(v) and v in old_to_new]
        elif key in UNSUPPORTED and value:
            raise TokenizerError(f"'{key}' holds token id sequences that cannot be renumbered safely; remove it "
                                 "or keep the full vocabulary", where)
        else:
            out[key] = value
    return out
