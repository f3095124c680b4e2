"""Rewrite the transformers-side files: tokenizer_config.json, special_tokens_map.json, added_tokens.json.

They name tokens by content, except `added_tokens_decoder` (keyed by id as a string) and
added_tokens.json (content -> id), which are renumbered with dropped entries removed. The
lists of extra special tokens lose the placeholders the keep set dropped; role tokens (bos,
eos, ...) are always kept by the planner, so a dropped one here means a hand-made keep set.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.named_tokens import LIST_KEYS, ROLE_KEYS, role_tokens, token_text


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_config(config: Mapping[str, Any], tokens: Mapping[int, str], path: Path) -> None:
    """Refuse token names and an added_tokens_decoder that transformers could not load or that contradict
    tokenizer.json, before a keep set is planned from them.

    Role tokens are a string, a {"content": ...} object or null; the extra special token lists
    hold such tokens (extra_special_tokens may also map names to them); added_tokens_decoder maps
    ids to {"content": ...} objects that agree with tokenizer.json wherever it has that id.
    """
    for key in ROLE_KEYS:
        value = config.get(key)
        if value is not None and token_text(value) is None:
            raise TokenizerError(f"{key} is {_short(value)}; expected a token string, a {{\"content\": ...}} object "
                                 "or null", path)
    for key in LIST_KEYS:
        value = config.get(key)
        items = list(value.values()) if key == "extra_special_tokens" and isinstance(value, Mapping) else value
        if value is not None and (not isinstance(items, list) or any(token_text(v) is None for v in items)):
            raise TokenizerError(f"{key} is {_short(value)}; expected a list of token strings", path)
    decoder = config.get("added_tokens_decoder")
    if decoder is None:
        return
    if not isinstance(decoder, Mapping):
        raise TokenizerError(f"added_tokens_decoder is {_short(decoder)}, not an object keyed by token id", path)
    for key, entry in decoder.items():
        if not str(key).isdigit():
            raise TokenizerError(f"added_tokens_decoder key {_short(key)} is not a token id", path)
        if not isinstance(entry, Mapping) or token_text(entry) is None:
            raise TokenizerError(f"added_tokens_decoder[{key}] is {_short(entry)}; expected an object with a "
                                 "string content", path)
        held = tokens.get(int(key))
        if held is not None and held != entry["content"]:
            raise TokenizerError(f"added_tokens_decoder gives id {key} the token {_short(entry['content'])}, but "
                                 f"tokenizer.json's token {key} is {_short(held)}; the two files describe different "
                                 "tokenizers", path)


def _check_roles(config: Mapping[str, Any], kept: set[str], known: set[str], path: Path) -> None:
    for role, text in role_tokens(config).items():
        if text in known and text not in kept:
            raise TokenizerError(f"{role} {text!r} is dropped by the keep set; plan it with plan_tokenizer", path)


def _filter_lists(config: Mapping[str, Any], kept: set[str], known: set[str]) -> dict[str, Any]:
    out = dict(config)
    for key in LIST_KEYS:
        value = config.get(key)
        if isinstance(value, list):
            out[key] = [v for v in value if (t := token_text(v)) is None or t in kept or t not in known]
    return out


def rewrite_tokenizer_config(config: Mapping[str, Any], old_to_new: Mapping[int, int], kept: set[str],
                             known: set[str], path: Path) -> dict[str, Any]:
    """tokenizer_config.json with added_tokens_decoder renumbered and dropped placeholders unlisted."""
    _check_roles(config, kept, known, path)
    out = _filter_lists(config, kept, known)
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        renumbered: dict[int, Any] = {}
        for key, entry in decoder.items():
            try:
                old = int(key)
            except ValueError as exc:
                raise TokenizerError(f"added_tokens_decoder key {key!r} is not a token id", path) from exc
            if old in old_to_new:
                renumbered[old_to_new[old]] = entry
        out["added_tokens_decoder"] = {str(k): renumbered[k] for k in sorted(renumbered)}
    return out


def rewrite_special_tokens_map(config: Mapping[str, Any], kept: set[str], known: set[str],
                               path: Path) -> dict[str, Any]:
    """special_tokens_map.json without dropped placeholders in its lists."""
    _check_roles(config, kept, known, path)
    return _filter_lists(config, kept, known)


def check_added_tokens(added: Mapping[str, Any], path: Path) -> None:
    """added_tokens.json maps token contents to integer ids."""
    for content, old in added.items():
        if not isinstance(old, int) or isinstance(old, bool):
            raise TokenizerError(f"token {content!r} has id {old!r}, not an integer", path)


def rewrite_added_tokens(added: Mapping[str, Any], old_to_new: Mapping[int, int], path: Path) -> dict[str, int]:
    """added_tokens.json (content -> id) renumbered, dropped tokens removed."""
    check_added_tokens(added, path)
    out: dict[str, int] = {}
    for content, old in added.items():
        if old in old_to_new:
            out[content] = old_to_new[old]
    return dict(sorted(out.items(), key=lambda item: item[1]))
