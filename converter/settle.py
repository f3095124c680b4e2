"""The plan as it will be exported: validated against the source and grown by the tokenizer's rules.

A requested keep set is rarely one the tokenizer can live with (special tokens, chat-template
tokens, the byte alphabet and the BPE merge closure must stay), so every export, dry run and
verify reference settles the plan here first; what it returns is what prune_plan.json records.
A plan that keeps every token copies the tokenizer files unchanged, so they are only checked to
load, here, before anything is written.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from converter.errors import ConvertError
from converter.plan import PrunePlan
from converter.source import Source

if TYPE_CHECKING:
    from converter.tokenizer import TokenizerRewrite


def settle_plan(source: Source, plan: PrunePlan,
                keep_reserved: bool = False) -> tuple[PrunePlan, TokenizerRewrite | None]:
    """Validate the plan, then grow its keep set by the tokenizer's rules when it drops tokens.

    Returns the final plan (what the embedding keeps and prune_plan.json records) and the
    TokenizerRewrite, or None when every token is kept (then the tokenizer files that will be
    copied are checked to load instead). Raises ConvertError naming the file on the first problem.
    """
    fingerprint = source.checkpoint.fingerprint() if plan.source_fingerprint else None
    plan.validate(source.spec, fingerprint)
    if plan.keeps_all_tokens(source.spec.dims.vocab):
        from converter.tokenizer.unchanged_files import check_unchanged_files

        check_unchanged_files(source.folder)
        return plan, None
    if not (source.folder / "tokenizer.json").is_file():
        raise ConvertError("the plan drops tokens but the model has no tokenizer.json to rewrite; keep every token "
                           "or add the tokenizer", source.folder)
    from converter.tokenizer import plan_tokenizer

    rewrite = plan_tokenizer(source.folder, plan.kept_token_ids, vocab_size=source.spec.dims.vocab,
                             keep_reserved=keep_reserved)
    added = {k: v for k, v in rewrite.added_by_rules.items() if v}
    final = plan.with_tokens(rewrite.kept_ids, tokens_requested=len(plan.kept_token_ids), tokens_added_by_rules=added)
    final.validate(source.spec, fingerprint)
    return final, rewrite
