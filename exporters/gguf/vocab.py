"""`tokenizer.*` metadata from a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json).

Two tokenizer.json layouts map onto llama.cpp: byte-level BPE becomes `tokenizer.ggml.model =
gpt2` (tokens in the byte alphabet, merges, and a named pre-tokenizer), SentencePiece-style BPE
with byte fallback becomes `llama` (pieces with U+2581 for spaces, `<0xNN>` byte tokens, and
scores). llama.cpp's `llama` tokenizer merges the adjacent pair whose result has the highest
score, so a piece's score is minus the rank of the first merge that makes it: the same order
Hugging Face's BPE applies merges in. Token types follow llama.cpp's converter: added special
tokens (or ones that look special) are CONTROL, other added tokens USER_DEFINED, `<0xNN>` BYTE,
ids with no token `[PADn]` UNUSED. The token count always equals the embedding rows.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys, TokenType

from converter.errors import ConvertError
from converter.tokenizer.bpe_json import mentions_type
from converter.tokenizer.shared_json import read_shared_json
from exporters.companions import read_json
from exporters.gguf.hparams import Kv, boolean, string, u32

SPIECE_SPACE = "\u2581"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPECIAL_KINDS = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
                 "sep": Keys.Tokenizer.SEP_ID, "pad": Keys.Tokenizer.PAD_ID, "mask": Keys.Tokenizer.MASK_ID}
ADDED_SCORE = -1000.0
UNREACHABLE_SCORE = -1e9
MAX_TOKENIZER_BYTES = 1 << 30


def read_tokenizer_json(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer.json"
    data = read_shared_json(path, MAX_TOKENIZER_BYTES, "a tokenizer.json",  # parsed once a run, see shared_json
                            "is missing; GGUF export writes the vocabulary from tokenizer.json")
    if not isinstance(data.get("model"), dict):
        raise ConvertError("has no 'model' object", path)
    return data



def tokenizer_model(data: Mapping[str, Any], path: Path) -> str:
    """'gpt2' (byte-level BPE) or 'llama' (SentencePiece-style BPE), or a ConvertError."""
    model = data["model"]
    if model.get("type") != "BPE":
        raise ConvertError(f"is a {model.get('type')!r} tokenizer; GGUF export handles byte-level and "
                           "SentencePiece-style BPE", path)
    if mentions_type(data.get("pre_tokenizer"), "ByteLevel") or mentions_type(data.get("decoder"), "ByteLevel"):
        return "gpt2"
    spm_like = mentions_type(data.get("pre_tokenizer"), "Metaspace") or SPIECE_SPACE in json.dumps(
        data.get("normalizer"), ensure_ascii=False)
    if model.get("byte_fallback") and spm_like:
        return "llama"
    raise ConvertError("is a BPE tokenizer that is neither byte-level nor SentencePiece-style with byte "
                       "fallback; llama.cpp has no matching tokenizer", path)


def add_space_prefix(data: Mapping[str, Any]) -> bool:
    """Whether the SentencePiece-style normalizer or pre-tokenizer puts U+2581 before the text."""
    if mentions_type(data.get("normalizer"), "Prepend"):
        return True
    pre = json.dumps(data.get("pre_tokenizer"))
    return '"Metaspace"' in pre and ('"prepend_scheme": "first"' in pre or '"prepend_scheme": "always"' in pre
                                     or '"add_prefix_space": true' in pre)


def looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special: names it treats as control tokens even when not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def _gguf_merges(merges: list[Any], path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Merges as llama.cpp stores them ('a b'; a space inside a part written as U+0120, gguf-py's rule)
    and as pairs."""
    strings, pairs = [], []
    for m in merges:
        if isinstance(m, str) and " " in m:
            a, b = m.split(" ", 1)
            strings.append(m)
        elif isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], str):
            a, b = m
            if " " in a or " " in b:
                strings.append(f"{a.replace(' ', chr(0x120))} {b.replace(' ', chr(0x120))}")
            else:
                strings.append(f"{a} {b}")
        else:
            raise ConvertError(f"has a malformed merge {m!r}", path)
        pairs.append((a, b))
    return strings, pairs


def _special_id(kind: str, config: Mapping[str, Any], model_config: Mapping[str, Any],
                ids: Mapping[str, int]) -> int | None:
    entry = config.get(f"{kind}_token")
    content = entry.get("content") if isinstance(entry, dict) else entry
    if isinstance(content, str) and content in ids:
        return ids[content]
    value = model_config.get(f"{kind}_token_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _added_flags(config: Mapping[str, Any], data: Mapping[str, Any], bos: str | None, eos: str | None
                 ) -> tuple[bool, bool]:
    """add_bos/add_eos: tokenizer_config's flags, else what the post-processor template adds."""
    flags = {}
    for kind, token in (("bos", bos), ("eos", eos)):
        explicit = config.get(f"add_{kind}_token")
        if isinstance(explicit, bool):
            flags[kind] = explicit
            continue
        single: list[Any] = []
        post = data.get("post_processor") or {}
        for proc in post.get("processors", [post]) if isinstance(post, dict) else []:
            if isinstance(proc, dict) and proc.get("type") == "TemplateProcessing":
                single = proc.get("single") or []
        ends = [e.get("SpecialToken", {}).get("id") for e in (single[:1] if kind == "bos" else single[-1:])]
        flags[kind] = token is not None and token in ends
    return flags["bos"], flags["eos"]


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"cannot be read ({type(exc).__name__}: {exc})", path) from exc


def _chat_template(folder: Path, config: Mapping[str, Any]) -> list[Kv]:
    template, where = config.get("chat_template"), folder / "tokenizer_config.json"
    if template is None and (folder / "chat_template.jinja").is_file():
        template, where = _read_template(folder / "chat_template.jinja"), folder / "chat_template.jinja"
    if template is None:
        template, where = (read_json(folder / "chat_template.json") or {}).get("chat_template"), \
            folder / "chat_template.json"
    if isinstance(template, str):
        return [string(Keys.Tokenizer.CHAT_TEMPLATE, template)]
    if template is not None and not (isinstance(template, list) and all(
            isinstance(c, dict) and isinstance(c.get("template"), str) for c in template)):
        raise ConvertError("chat_template is neither a string nor a list of {name, template} objects", where)
    kvs, names = [], []
    for choice in template or []:
        name = re.sub(r"[^A-Za-z0-9]", "_", str(choice.get("name", "")))
        if name == "default":
            kvs.append(string(Keys.Tokenizer.CHAT_TEMPLATE, choice["template"]))
        elif name:
            names.append(name)
            kvs.append(string(Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name), choice["template"]))
    if names:
        kvs.append(Kv(Keys.Tokenizer.CHAT_TEMPLATES, names, GGUFValueType.ARRAY, GGUFValueType.STRING))
    return kvs


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ids(data: Mapping[str, Any], path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """model.vocab and added_tokens, refused unless every id is a non-negative integer."""
    vocab = data["model"].get("vocab") or {}
    if not isinstance(vocab, dict) or not all(_is_id(i) for i in vocab.values()):
        raise ConvertError("model.vocab is not an object mapping tokens to non-negative integer ids", path)
    added = data.get("added_tokens") or []
    if not isinstance(added, list):
        raise ConvertError("added_tokens is not a list", path)
    for a in added:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str) or not _is_id(a.get("id")):
            raise ConvertError(f"has a malformed added token {repr(a)[:80]}", path)
    return vocab, added


def vocabulary(folder: Path, model: str, pre: str | None, rows: int, data: dict[str, Any] | None = None
               ) -> list[Kv]:
    """Every `tokenizer.*` key for the tokenizer in `folder` (its tokenizer.json already parsed as `data`,
    if given), padded to `rows` tokens."""
    path = folder / "tokenizer.json"
    data = data if data is not None else read_tokenizer_json(folder)
    config = read_json(folder / "tokenizer_config.json") or {}
    vocab, added = _ids(data, path)
    top = max([*vocab.values(), *(a["id"] for a in added)], default=-1)
    if top >= rows:
        raise ConvertError(f"has token id {top}, but the embedding has only {rows} rows", path)
    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [int(TokenType.UNUSED)] * rows
    scores = [ADDED_SCORE] * rows
    merges, pairs = _gguf_merges(data["model"].get("merges") or [], path)
    rank: dict[str, int] = {}
    for i, (a, b) in enumerate(pairs):
        rank.setdefault(a + b, i)
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = int(TokenType.BYTE if model == "llama" and BYTE_TOKEN.fullmatch(text) else TokenType.NORMAL)
        scores[i] = -float(rank[text]) if text in rank else (0.0 if len(text) == 1 or types[i] == TokenType.BYTE
                                                            else UNREACHABLE_SCORE)
    unk = data["model"].get("unk_token")
    if model == "llama" and unk in vocab:
        types[vocab[unk]] = int(TokenType.UNKNOWN)
    for entry in added:
        content, i = entry["content"], entry["id"]
        special = bool(entry.get("special")) or looks_special(content)
        tokens[i] = content if special else content.replace(SPIECE_SPACE, " ")
        types[i] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        scores[i] = ADDED_SCORE
    ids = {**vocab, **{a["content"]: a["id"] for a in added}}
    kvs = [string(Keys.Tokenizer.MODEL, model), string(Keys.Tokenizer.PRE, pre or "default"),
           Kv(Keys.Tokenizer.LIST, tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
           Kv(Keys.Tokenizer.TOKEN_TYPE, types, GGUFValueType.ARRAY, GGUFValueType.INT32)]
    if model == "llama":
        kvs.append(Kv(Keys.Tokenizer.SCORES, scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32))
        kvs.append(boolean(Keys.Tokenizer.ADD_PREFIX, add_space_prefix(data)))
    else:
        kvs.append(Kv(Keys.Tokenizer.MERGES, merges, GGUFValueType.ARRAY, GGUFValueType.STRING))
    model_config = read_json(folder / "config.json") or {}
    special_ids = {kind: _special_id(kind, config, model_config, ids) for kind in SPECIAL_KINDS}
    for kind, key in SPECIAL_KINDS.items():
        special_id = special_ids[kind]
        if special_id is not None and 0 <= special_id < rows:
            kvs.append(u32(key, special_id))
    names = {i: t for t, i in ids.items()}
    add_bos, add_eos = _added_flags(config, data, names.get(special_ids["bos"]), names.get(special_ids["eos"]))
    kvs += [boolean(Keys.Tokenizer.ADD_BOS, add_bos), boolean(Keys.Tokenizer.ADD_EOS, add_eos)]
    kvs += _chat_template(folder, config)
    return kvs
