"""Check the tokenizer files an export copies unchanged, so a corrupt one is refused, not shipped.

A plan that keeps every token (an identity or FFN-only cut) never reaches the keep-set planner,
which is where a rewrite parses every tokenizer file; without this check a corrupt tokenizer.json,
tokenizer.model or tokenizer_config.json would be copied beside the weights and the export would
succeed with a tokenizer that cannot load. Only load and parse checks run, with the rewrite path's
parsers and one-line errors: the tokenizers library loads tokenizer.json (parsed in Python only to
name what is wrong with a file it refuses), the SentencePiece protobuf parses (any model type),
the JSON configs parse and name tokens tokenizer.json has, the chat templates are text, and no
file links out of the folder (converter.io.model_folder).
Nothing is planned, so the cost is about one tokenizer load (a second or so for 262k tokens).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from converter.io.model_folder import check_links
from converter.tokenizer.bpe_json import MAX_TOKEN_ID
from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.sentencepiece_model import parse_sentencepiece
from converter.tokenizer.source import (ADDED_TOKENS, MAX_TOKENIZER_JSON_BYTES, SENTENCEPIECE_MODEL,
                                        SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_JSON, read_chat_templates,
                                        read_json)
from converter.tokenizer.tokenizer_config import check_added_tokens, check_config
from converter.tokenizer.tokenizer_json import load_tokenizer


def _load(path: Path) -> Tokenizer:
    """tokenizer.json as the tokenizers library loads it, with the rewrite path's message for a file that
    is too large, not JSON or not an object."""
    if path.stat().st_size > MAX_TOKENIZER_JSON_BYTES:
        read_json(path, required=True)  # refuses the size before a byte is read
    try:
        return load_tokenizer(path)
    except TokenizerError:
        read_json(path, required=True)  # names a syntax, nesting or top-level problem if there is one
        raise


def _tokens_named(config: Mapping[str, Any], tokenizer: Tokenizer | None) -> dict[int, str]:
    """tokenizer.json's token for each id added_tokens_decoder names (what check_config compares)."""
    decoder = config.get("added_tokens_decoder")
    if tokenizer is None or not isinstance(decoder, Mapping):
        return {}
    ids = (int(key) for key in decoder if str(key).isdigit())
    return {i: token for i in ids if i <= MAX_TOKEN_ID and (token := tokenizer.id_to_token(i)) is not None}


def check_unchanged_files(folder: Path) -> None:
    """Refuse, with a TokenizerError naming the file, any tokenizer file of `folder` that would not load.

    Absent files are fine: a model folder need not carry a tokenizer for its weights to be pruned.
    """
    check_links(folder)
    json_path = folder / TOKENIZER_JSON
    tokenizer = _load(json_path) if json_path.is_file() else None
    config = read_json(folder / TOKENIZER_CONFIG)
    check_config(config, _tokens_named(config, tokenizer), folder / TOKENIZER_CONFIG)
    special = read_json(folder / SPECIAL_TOKENS_MAP)
    check_config(special, _tokens_named(special, tokenizer), folder / SPECIAL_TOKENS_MAP)
    check_added_tokens(read_json(folder / ADDED_TOKENS), folder / ADDED_TOKENS)
    read_chat_templates(folder, config)
    if (folder / SENTENCEPIECE_MODEL).is_file():
        parse_sentencepiece(folder / SENTENCEPIECE_MODEL)
