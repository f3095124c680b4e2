"""Tokens a chat template needs: the specials it spells out and the scaffold it renders.

Two sources. Any added token whose text appears in the template source (`<start_of_turn>`,
`<|im_end|>`), and the tokens of the template's own text around the messages (role names,
newlines, a default system prompt), found by rendering it on empty conversations the way
transformers does (a sandboxed Jinja environment with `raise_exception` and `strftime_now`).
Keeping both means `apply_chat_template` gives the same ids, mapped, after pruning. A template
that cannot be rendered without real inputs contributes only its spelled-out tokens; so does one
that the sandbox stops (template_sandbox.py: a few seconds and a few MB for all templates
together, a huge range, endless recursion), with a one-line warning naming its file. Renderings
are cached per process: a run that plans many keep sets (fitting a vocabulary budget) renders, and
waits for a hostile template, once.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from converter.tokenizer.named_tokens import role_tokens
from converter.tokenizer.source import ChatTemplate
from converter.tokenizer.vocabulary import AddedToken

TIME_LIMIT_S = 3.0
OUTPUT_LIMIT_CHARS = 4 << 20

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


def _stopped(template: ChatTemplate, why: str) -> None:
    print(f"warning: {template.path}: rendering the chat template stopped at {why}; only the tokens it spells "
          "out are kept for it", file=sys.stderr)


def rendered_scaffolds(templates: Iterable[ChatTemplate], tokenizer_config: Mapping[str, Any]) -> list[str]:
    """Each template rendered on empty conversations; templates that refuse them are skipped, and
    templates stopped by a limit are skipped with a warning on stderr."""
    return list(_render_all(tuple(templates), tuple(sorted(role_tokens(tokenizer_config).items()))))


@lru_cache(maxsize=8)
def _render_all(templates: tuple[ChatTemplate, ...], roles: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    try:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols

        from converter.tokenizer.template_sandbox import Budget, LimitedEnvironment, TemplateLimit
    except ImportError:
        return ()
    env = LimitedEnvironment(Budget(TIME_LIMIT_S, OUTPUT_LIMIT_CHARS), trim_blocks=True, lstrip_blocks=True,
                             extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    out: list[str] = []
    for chat_template in templates:
        try:
            template = env.compile_limited(chat_template.text)
            for messages in _CONVERSATIONS:
                try:
                    out.append(env.render(template, messages=messages, add_generation_prompt=True, **dict(roles)))
                except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                        ArithmeticError):
                    continue
        except TemplateError:
            continue
        except TemplateLimit as exc:
            _stopped(chat_template, str(exc))
        except RecursionError:
            _stopped(chat_template, "Python's recursion limit")
    return tuple(out)
