"""Rewrite tokenizer.json: the BPE model, added tokens, post-processor and padding ids.

Normalizer, pre-tokenizer and decoder carry no ids and are kept as they are. Post-processors
insert special tokens by id: TemplateProcessing (`special_tokens[name].ids`), BertProcessing and
RobertaProcessing (`sep`/`cls` as [token, id]), possibly inside a Sequence; ByteLevel has none.
An unknown post-processor type is refused, since it might carry ids this module would miss.
The result is loaded with the `tokenizers` library before it is written, so a file that the
library rejects is never produced.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from converter.tokenizer.bpe_json import BpeModel, rewrite_bpe_model
from converter.tokenizer.errors import TokenizerError

ID_FREE_PROCESSORS = ("ByteLevel",)
PAIR_PROCESSORS = ("BertProcessing", "RobertaProcessing")


def _processors(node: Mapping[str, Any] | None, path: Path) -> Iterator[Mapping[str, Any]]:
    if node is None:
        return
    kind = node.get("type")
    if kind == "Sequence":
        for child in node.get("processors") or []:
            yield from _processors(child, path)
    elif kind in ID_FREE_PROCESSORS or kind == "TemplateProcessing" or kind in PAIR_PROCESSORS:
        yield node
    else:
        raise TokenizerError(f"post_processor type {kind!r} is not supported by tokenizer surgery", path)


def _pair(node: Mapping[str, Any], key: str, path: Path) -> tuple[str, int]:
    value = node.get(key)
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
            or not isinstance(value[1], int)):
        raise TokenizerError(f"post_processor {node.get('type')} has {key}={value!r}, not [token, id]", path)
    return value[0], value[1]


def _template_ids(node: Mapping[str, Any], path: Path) -> Iterator[tuple[str, list[int]]]:
    """(name, ids) of a TemplateProcessing's special tokens, refusing shapes the library would not load."""
    specials = node.get("special_tokens") or {}
    if not isinstance(specials, Mapping):
        raise TokenizerError("post_processor TemplateProcessing special_tokens is not an object", path)
    for name, entry in specials.items():
        ids = entry.get("ids") if isinstance(entry, Mapping) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TokenizerError(f"post_processor special token {str(name)[:40]!r} has no list of integer ids", path)
        yield name, ids


def processor_ids(data: Mapping[str, Any], path: Path) -> set[int]:
    """Ids the post-processor inserts and the padding id: the tokenizer emits them itself."""
    ids: set[int] = set()
    for node in _processors(data.get("post_processor"), path):
        if node["type"] == "TemplateProcessing":
            for _, entry_ids in _template_ids(node, path):
                ids.update(entry_ids)
        elif node["type"] in PAIR_PROCESSORS:
            ids.update(_pair(node, key, path)[1] for key in ("sep", "cls"))
    padding = data.get("padding")
    if isinstance(padding, Mapping) and isinstance(padding.get("pad_id"), int):
        ids.add(padding["pad_id"])
    return ids


def _new_id(old: int, old_to_new: Mapping[int, int], what: str, path: Path) -> int:
    if old not in old_to_new:
        raise TokenizerError(f"{what} uses id {old}, which the keep set drops; plan the keep set with "
                             "plan_tokenizer so it keeps every id the tokenizer inserts itself", path)
    return old_to_new[old]


def _remap_processor(node: Mapping[str, Any] | None, old_to_new: Mapping[int, int], path: Path) -> Any:
    if node is None:
        return None
    out = dict(node)
    kind = node.get("type")
    if kind == "Sequence":
        out["processors"] = [_remap_processor(c, old_to_new, path) for c in node.get("processors") or []]
    elif kind == "TemplateProcessing":
        specials = node.get("special_tokens") or {}
        out["special_tokens"] = {
            name: {**specials[name], "ids": [_new_id(i, old_to_new, f"post_processor token {name!r}", path)
                                             for i in ids]}
            for name, ids in _template_ids(node, path)
        }
    elif kind in PAIR_PROCESSORS:
        for key in ("sep", "cls"):
            token, old = _pair(node, key, path)
            out[key] = [token, _new_id(old, old_to_new, f"post_processor {key}", path)]
    elif kind not in ID_FREE_PROCESSORS:
        raise TokenizerError(f"post_processor type {kind!r} is not supported by tokenizer surgery", path)
    return out


def rewrite_tokenizer_json(data: Mapping[str, Any], bpe: BpeModel, old_to_new: Mapping[int, int],
                           path: Path) -> dict[str, Any]:
    """tokenizer.json with every id renumbered and every dropped token and merge removed."""
    out = dict(data)
    out["model"] = rewrite_bpe_model(data["model"], bpe, old_to_new)
    added = [dict(tok, id=old_to_new[tok["id"]]) for tok in data.get("added_tokens") or []
             if tok["id"] in old_to_new]
    out["added_tokens"] = sorted(added, key=lambda tok: tok["id"])
    out["post_processor"] = _remap_processor(data.get("post_processor"), old_to_new, path)
    padding = data.get("padding")
    if isinstance(padding, Mapping) and isinstance(padding.get("pad_id"), int):
        out["padding"] = {**padding, "pad_id": _new_id(padding["pad_id"], old_to_new, "padding.pad_id", path)}
    return out


def load_tokenizer(path: Path) -> Tokenizer:
    """The source tokenizer.json as the tokenizers library reads it, or a TokenizerError naming it.

    The library checks what this package does not model (flag types, normalizer and
    pre-tokenizer schemas, merges naming unknown tokens), so a file it refuses is refused here.
    """
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises plain Exception subclasses
        raise TokenizerError(f"cannot be loaded by the tokenizers library ({str(exc)[:200]})", path) from exc


def dump_tokenizer_json(data: Mapping[str, Any], path: Path) -> str:
    """Serialize (compactly: indenting a 262k-token vocabulary is several times slower) and prove the
    tokenizers library loads the result; when it does not, blame the source if the library refuses
    that too."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # the Rust loader raises plain Exception subclasses
        load_tokenizer(path)
        raise TokenizerError(f"the rewritten tokenizer.json does not load ({str(exc)[:200]})", path) from exc
    return text
