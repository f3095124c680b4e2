"""Write the rewritten tokenizer files of a model folder into an output folder.

tokenizer.json, tokenizer_config.json, special_tokens_map.json and added_tokens.json are
renumbered; tokenizer.model is rewritten when the source has one; chat templates are copied
as they are (they name tokens by text, and the planner kept every token they spell out). Only
files the source has are written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converter.io.safe_copy import copy_inside
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.keepset import TokenizerRewrite
from converter.tokenizer.parsed import ParsedTokenizer, gc_paused, parse_tokenizer
from converter.tokenizer.sentencepiece_model import rewrite_sentencepiece
from converter.tokenizer.source import (ADDED_TOKENS, CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON,
                                        SENTENCEPIECE_MODEL, SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_JSON)
from converter.tokenizer.tokenizer_config import (rewrite_added_tokens, rewrite_special_tokens_map,
                                                  rewrite_tokenizer_config)
from converter.tokenizer.tokenizer_json import dump_tokenizer_json, rewrite_tokenizer_json


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def _check_ids(tok: ParsedTokenizer, rewrite: TokenizerRewrite) -> None:
    missing = [i for i in rewrite.kept_ids if i not in tok.vocabulary.tokens]
    if missing:
        raise TokenizerError(f"the keep set names {len(missing)} ids that have no token (first: {missing[0]}); "
                             "plan it with plan_tokenizer for this folder", tok.json_path)


def copy_chat_templates(src: Path, out_dir: Path) -> list[Path]:
    """Copy the chat templates kept in files of their own (chat_template.jinja, chat_template.json,
    additional_chat_templates/*.jinja) as they are; they name tokens by text."""
    written = []
    for name in (CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON):
        if (src / name).is_file():
            written.append(copy_inside(src / name, src, out_dir / name))
    if (src / CHAT_TEMPLATE_DIR).is_dir():
        (out_dir / CHAT_TEMPLATE_DIR).mkdir(exist_ok=True)
        for path in sorted((src / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            written.append(copy_inside(path, src, out_dir / CHAT_TEMPLATE_DIR / path.name))
    return written


def write_tokenizer(src_dir: Path, rewrite: TokenizerRewrite, out_dir: Path) -> list[Path]:
    """Write every tokenizer file of `src_dir`, rewritten for `rewrite`, into `out_dir`; return the paths."""
    with gc_paused():
        return _write(parse_tokenizer(Path(src_dir)), rewrite, Path(out_dir))


def _write(tok: ParsedTokenizer, rewrite: TokenizerRewrite, out_dir: Path) -> list[Path]:
    _check_ids(tok, rewrite)
    source = tok.source
    old_to_new = rewrite.old_to_new()
    kept = {tok.vocabulary.tokens[i] for i in rewrite.kept_ids}
    known = set(tok.vocabulary.ids)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = rewrite_tokenizer_json(source.tokenizer_json, tok.bpe, old_to_new, tok.json_path)
    (out_dir / TOKENIZER_JSON).write_text(dump_tokenizer_json(data, tok.json_path), encoding="utf-8")
    written = [out_dir / TOKENIZER_JSON]
    if source.path(TOKENIZER_CONFIG).is_file():
        written.append(_write_json(out_dir / TOKENIZER_CONFIG, rewrite_tokenizer_config(
            source.tokenizer_config, old_to_new, kept, known, source.path(TOKENIZER_CONFIG))))
    if source.path(SPECIAL_TOKENS_MAP).is_file():
        written.append(_write_json(out_dir / SPECIAL_TOKENS_MAP, rewrite_special_tokens_map(
            source.special_tokens_map, kept, known, source.path(SPECIAL_TOKENS_MAP))))
    if source.path(ADDED_TOKENS).is_file():
        written.append(_write_json(out_dir / ADDED_TOKENS, rewrite_added_tokens(
            source.added_tokens, old_to_new, source.path(ADDED_TOKENS))))
    written += copy_chat_templates(source.root, out_dir)
    if tok.sentencepiece is not None:
        (out_dir / SENTENCEPIECE_MODEL).write_bytes(rewrite_sentencepiece(tok.sentencepiece, rewrite.kept_ids))
        written.append(out_dir / SENTENCEPIECE_MODEL)
    return written
