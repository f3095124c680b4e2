"""Tokenizer surgery: make a tokenizer agree with an embedding that keeps only some rows.

`plan_tokenizer` expands the token ids a prune plan wants into a keep set the tokenizer can
live with (specials, chat-template tokens, the byte alphabet, the BPE merge closure);
`write_tokenizer` rewrites tokenizer.json, tokenizer_config.json, special_tokens_map.json,
added_tokens.json and tokenizer.model for it (new id i is old id kept_ids[i]);
`remap_special_ids` renumbers the ids in config.json and generation_config.json.
`TokenizerPlanner` parses a folder once for callers that plan many keep sets. Text whose
original tokenization used only kept tokens tokenizes to exactly the mapped ids, and any text
still encodes losslessly.
"""
from __future__ import annotations

from converter.tokenizer.errors import TokenizerError
from converter.tokenizer.keepset import TokenizerPlanner, TokenizerRewrite, plan_tokenizer
from converter.tokenizer.special_ids import remap_special_ids
from converter.tokenizer.file_rewrite import write_tokenizer

__all__ = ["TokenizerError", "TokenizerPlanner", "TokenizerRewrite", "plan_tokenizer", "remap_special_ids",
           "write_tokenizer"]
