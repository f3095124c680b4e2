"""Tokens a chat template needs: the specials it spells out and the scaffold it renders.

Two sources. Any added token whose text appears in the template source (`<start_of_turn>`,
`<|im_end|>`), and the tokens of the template's own text around the messages (role names,
newlines, a default system prompt), found by rendering it on empty conversations the way
transformers does (a sandboxed Jinja environment with `raise_exception` and `strftime_now`).
Keeping both means `apply_chat_template` gives the same ids, mapped, after pruning. A template
that cannot be rendered without real inputs (or that the sandbox stops: a huge range, endless
recursion) contributes only its spelled-out tokens.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from converter.tokenizer.named_tokens import role_tokens
from converter.tokenizer.vocabulary import AddedToken

_CONVERSATIONS = (
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
)


def spelled_out(templates: Iterable[str], added: Iterable[AddedToken]) -> set[int]:
    """Ids of added tokens whose text occurs in a template (whitespace-only tokens excluded)."""
    sources = list(templates)
    return {tok.id for tok in added if tok.content.strip() and any(tok.content in s for s in sources)}


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def rendered_scaffolds(templates: Iterable[str], tokenizer_config: Mapping[str, Any]) -> list[str]:
    """Each template rendered on empty conversations; templates that refuse them are skipped."""
    try:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return []
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    roles = role_tokens(tokenizer_config)
    out: list[str] = []
    for source in templates:
        try:
            template = env.from_string(source)
        except (TemplateError, RecursionError):
            continue
        for messages in _CONVERSATIONS:
            try:
                out.append(template.render(messages=messages, add_generation_prompt=True, **roles))
            except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError,
                    RecursionError):
                continue
    return out
