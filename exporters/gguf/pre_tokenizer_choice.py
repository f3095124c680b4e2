"""Name the source model's pre-tokenizer the way llama.cpp does, before ids are remapped.

llama.cpp's converter hashes the ids its tokenizer gives for a fixed test string; after vocabulary
pruning those ids change, so the hash must be taken on the SOURCE tokenizer. When the hash is
unknown (a fine-tune with a changed vocabulary, a tokenizer trained here), the tokenizer.json
pre_tokenizer definition is matched against the definitions llama.cpp implements. A user's
`--pre NAME` overrides both; an unknown name, or a tokenizer neither way recognises, is a
ConvertError: a wrong pre-tokenizer silently changes tokenization.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from converter.errors import ConvertError
from exporters.gguf.pre_tokenizer_table import CHKTXT, DEFINITIONS, KNOWN_HASHES, PRE_NAMES

ID_FIELDS = ("type", "pretokenizers", "pattern", "behavior", "invert", "individual_digits", "use_regex",
             "add_prefix_space", "String", "Regex")


def canonical(node: Any) -> Any:
    """A pre_tokenizer definition reduced to the fields that change token ids."""
    if isinstance(node, dict):
        return {k: canonical(v) for k, v in node.items() if k in ID_FIELDS}
    if isinstance(node, list):
        return [canonical(v) for v in node]
    return node


_HASH_CHILD = """
import hashlib, sys
from tokenizers import Tokenizer
ids = Tokenizer.from_file(sys.argv[1]).encode(sys.stdin.read()).ids
print(hashlib.sha256(str(ids).encode()).hexdigest())
"""


def chktxt_hash(tokenizer_json: Path) -> str:
    """sha256 of str(ids) of CHKTXT, special tokens added, as llama.cpp's get_vocab_base_pre computes it.

    It runs in a child process: a large tokenizer costs ~200 MB to load, which the allocator
    would otherwise keep through the whole export.
    """
    done = subprocess.run([sys.executable, "-c", _HASH_CHILD, str(tokenizer_json)], input=CHKTXT.encode("utf-8"),
                          capture_output=True, check=False)
    digest = done.stdout.decode().strip()
    if done.returncode != 0 or len(digest) != 64:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ConvertError(f"cannot be loaded by the tokenizers library ({last})", tokenizer_json)
    return digest


def identify_pre(tokenizer_json: Path, data: dict[str, Any], override: str | None) -> tuple[str, str]:
    """(llama.cpp pre name, how it was found) for a byte-level BPE tokenizer."""
    if override is not None:
        if override not in PRE_NAMES:
            raise ConvertError(f"--pre {override!r} is not a pre-tokenizer llama.cpp knows; known names include "
                               "gpt-2, llama-bpe, qwen2, smollm, starcoder, tekken")
        return override, "--pre"
    digest = chktxt_hash(tokenizer_json)
    known = KNOWN_HASHES.get(digest)
    if known is not None and known[0] in PRE_NAMES:
        return known[0], f"token hash of {known[1]}"
    definition = canonical(data.get("pre_tokenizer"))
    for name, expected in DEFINITIONS.items():
        if definition == expected:
            return name, "pre_tokenizer definition"
    shown = json.dumps(data.get("pre_tokenizer"))[:200]
    raise ConvertError(f"cannot tell which llama.cpp pre-tokenizer matches this tokenizer (hash {digest[:12]}, "
                       f"pre_tokenizer {shown}); pass --pre NAME with the name llama.cpp uses for the source model",
                       tokenizer_json)
