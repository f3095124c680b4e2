"""Which tokens the tokenizer configs name, and which tokens are reserved placeholders.

tokenizer_config.json and special_tokens_map.json name tokens by content: the role tokens
(bos, eos, unk, pad, ...), given as a string or as an AddedToken-like {"content": ...} object,
and lists of extra specials. Placeholders such as `<|reserved_special_token_7|>`, `<unused12>`,
`[unused3]`, Mistral's `[control_8]` or Qwen's `<|extra_4|>` exist only to pad a vocabulary;
nothing uses them, so they are dropped unless asked for.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ROLE_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")

_RESERVED = re.compile(
    r"<\|?(?:reserved|unused|extra|placeholder|dummy)[_a-z]*?_?\d+\|?>|\[(?:unused|control_)\d+\]|<SPECIAL_\d+>",
    re.IGNORECASE,
)


def is_reserved(content: str) -> bool:
    """A numbered placeholder token that no text, template or config uses."""
    return _RESERVED.fullmatch(content) is not None


def token_text(value: object) -> str | None:
    """The content of a token given as a string or as a {"content": ...} object."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def role_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    """bos/eos/unk/... as the config names them; a dict-form extra_special_tokens names roles too."""
    roles = {key: text for key in ROLE_KEYS if (text := token_text(config.get(key))) is not None}
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        roles.update({str(k): t for k, v in extra.items() if (t := token_text(v)) is not None})
    return roles


def listed_tokens(config: Mapping[str, Any]) -> list[str]:
    """Contents of the additional/extra special token lists."""
    out: list[str] = []
    for key in LIST_KEYS:
        value = config.get(key)
        if isinstance(value, list):
            out += [t for v in value if (t := token_text(v)) is not None]
    return out


def named_tokens(config: Mapping[str, Any]) -> set[str]:
    """Tokens a config asks to keep: every role token, and listed tokens that are not placeholders."""
    return set(role_tokens(config).values()) | {t for t in listed_tokens(config) if not is_reserved(t)}
