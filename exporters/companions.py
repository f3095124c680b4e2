"""The files every export carries beside its weights: tokenizer, configs and the plan.

All formats ship the same rewritten tokenizer and the plan, so a user (or another tool) can
map ids between the original and the pruned model whatever runtime they use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.io.jsonfile import read_json_object
from converter.io.safe_copy import copy_inside
from converter.prune import PrunedCheckpoint

if TYPE_CHECKING:
    from converter.tokenizer import TokenizerRewrite

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json")  # and the chat template files, copied by copy_chat_templates
MAX_COMPANION_BYTES = 16 * 1024 * 1024


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from the model folder, or None if the file is absent."""
    if not path.is_file():
        return None
    return read_json_object(path, MAX_COMPANION_BYTES, "a configuration file")


def remap_ids(config: dict[str, Any], old_to_new: dict[int, int] | None, path: Path) -> dict[str, Any]:
    """Translate special token ids into the pruned vocabulary (unchanged when every token is kept)."""
    if old_to_new is None:
        return config
    from converter.tokenizer import remap_special_ids

    return remap_special_ids(config, old_to_new, where=path)


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def write_companions(pruned: PrunedCheckpoint, tokenizer: TokenizerRewrite | None, out_dir: Path, *,
                     write_config: bool = True) -> list[Path]:
    """Tokenizer files, config.json, generation_config.json and prune_plan.json into out_dir.

    `tokenizer` is the TokenizerRewrite whose keep set the plan already carries, or None when the
    plan keeps every token (then the tokenizer files, which settle_plan checked, are copied as they are).
    """
    folder = pruned.source.folder
    written: list[Path] = []
    keeps_all = pruned.plan.keeps_all_tokens(pruned.spec.dims.vocab)
    old_to_new = None if keeps_all else {old: new for new, old in enumerate(pruned.plan.kept_token_ids)}
    if tokenizer is not None:
        from converter.tokenizer import write_tokenizer

        if tuple(tokenizer.kept_ids) != pruned.plan.kept_token_ids:
            raise RuntimeError("the tokenizer keep set differs from the plan; expand the plan before pruning")
        written += write_tokenizer(folder, tokenizer, out_dir)
    elif keeps_all:
        from converter.tokenizer.file_rewrite import copy_chat_templates

        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                written.append(copy_inside(folder / name, folder, out_dir / name))
        written += copy_chat_templates(folder, out_dir)
    if write_config:
        written.append(write_json(out_dir / "config.json",
                                  remap_ids(pruned.new_config(), old_to_new, folder / "config.json")))
    generation = read_json(folder / "generation_config.json")
    if generation is None:
        generation = {k: pruned.spec.config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                      if pruned.spec.config.get(k) is not None}
    written.append(write_json(out_dir / "generation_config.json",
                              remap_ids(generation, old_to_new, folder / "generation_config.json")))
    written += pruned.plan.files(pruned.plan.save(out_dir / "prune_plan.json"))
    return written
