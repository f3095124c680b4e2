"""A Jinja sandbox with a budget, so rendering a hostile chat template stops within seconds.

jinja2's SandboxedEnvironment keeps a template away from Python's internals and caps one `range`
at 100,000 items, but bounds neither time nor memory: two nested `range(100000)` loops run for
hours, and `'x' * 10**9` or a string doubled by `~` in a loop builds gigabytes. `LimitedEnvironment`
charges the template's work to a `Budget` and raises `TemplateLimit` when it is spent, in the
rendering thread itself, so nothing is left running afterwards. The deadline is checked on every
loop iteration (each `for` loop is compiled to iterate through a check), call, attribute or item
access, operator and output value; `*`, `**` and `+` are refused before they build a value over the
size cap, and what calls, filters, `~` and `%` return is measured after. A single step that builds
a large value from small inputs (`'x'.ljust(10**9)`) is measured only once built: that one value
is the most this lets a template allocate. Constant folding is off, so nothing runs at compile time.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import nodes, pass_context, pass_environment
from jinja2.environment import Template
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

ITERATE = "compact_convert_iterate"  # hook filters the compiled template calls; not meant for templates
MEASURE = "compact_convert_measure"
MAX_INT_BITS = 1 << 16
SIZED = (str, bytes, list, tuple, dict)


class TemplateLimit(Exception):
    """Rendering ran past the budget; the message says which limit, as in "its 3 s time limit"."""


class Budget:
    """What one rendering may spend: a deadline, a cap on the size of any value, and a cap on output."""

    def __init__(self, seconds: float, max_chars: int) -> None:
        self.seconds = seconds
        self.max_chars = max_chars
        self.deadline = time.monotonic() + seconds
        self.output_left = max_chars

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"its {self.seconds:g} s time limit")

    def measure(self, value: Any) -> Any:
        """`value`, unless it is a string or collection over the size cap."""
        self.tick()
        if isinstance(value, SIZED) and len(value) > self.max_chars:
            raise TemplateLimit(f"its {self.max_chars:,}-character size limit")
        return value

    def emit(self, chunk: str) -> str:
        """Count a piece of output against the output cap."""
        self.output_left -= len(chunk)
        if self.output_left < 0:
            raise TemplateLimit(f"its {self.max_chars:,}-character output limit")
        self.tick()
        return chunk

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item


def _predicted_size(op: str, left: Any, right: Any) -> int:
    """The length a sequence `*` or `+` would build (0 when the operands are not such a pair)."""
    if op == "*":
        seq, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, SIZED) and isinstance(count, int):
            return len(seq) * max(count, 0)
    if op == "+" and isinstance(left, SIZED) and isinstance(right, SIZED):
        return len(left) + len(right)
    return 0


def _predicted_bits(op: str, left: Any, right: Any) -> int:
    """Bits of an integer `*` or `**` result (0 for other operands): a huge power never finishes."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 0
    if op == "*":
        return left.bit_length() + right.bit_length()
    if op == "**" and right > 0 and abs(left) > 1:
        return math.ceil(right * math.log2(abs(left)))
    return 0


def _range(*args: int) -> range:
    """jinja2's safe_range, with its cap reported as a limit rather than an error."""
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:  # more items than sys.maxsize
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        raise TemplateLimit(f"the sandbox's cap of {MAX_RANGE:,} items on range()")
    return numbers


@pass_environment
def _iterate(env: LimitedEnvironment, iterable: Iterable[Any]) -> Iterator[Any]:
    return env.budget.iterate(iterable)


@pass_environment
def _measure(env: LimitedEnvironment, value: Any) -> Any:
    return env.budget.measure(value)


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Runs on every `{{ value }}`; taking the context also keeps Jinja from evaluating output at compile time."""
    return context.environment.budget.measure(value)  # type: ignore[attr-defined]


def _hooked(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Guard(NodeTransformer):
    """Make every `for` loop iterate through the budget and every filter result and `~` be measured."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _hooked(node.iter, ITERATE)
        return node

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        self.generic_visit(node)
        return node if node.node is None else _hooked(node, MEASURE)  # node None: a {% filter %} block's own

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _hooked(node, MEASURE)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose templates spend `budget` (replace it before each rendering)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, budget: Budget, **options: Any) -> None:
        super().__init__(finalize=_finalize, optimized=False, **options)
        self.budget = budget
        self.globals["range"] = _range
        self.filters[ITERATE] = _iterate
        self.filters[MEASURE] = _measure

    def compile_limited(self, source: str) -> Template:
        """The template compiled with its loops and values routed through the budget."""
        tree = _Guard().visit(self.parse(source))
        tree.set_environment(self)
        return self.from_string(tree)

    def render(self, template: Template, **variables: Any) -> str:
        """The rendered text; raises TemplateLimit when the budget is spent (and Jinja's own errors)."""
        return "".join(map(self.budget.emit, template.generate(**variables)))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.budget.tick()
        return self.budget.measure(super().call(context, obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.budget.tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, op: str, left: Any, right: Any) -> Any:
        self.budget.tick()
        if _predicted_size(op, left, right) > self.budget.max_chars:
            raise TemplateLimit(f"its {self.budget.max_chars:,}-character size limit")
        if _predicted_bits(op, left, right) > MAX_INT_BITS:
            raise TemplateLimit(f"its {MAX_INT_BITS:,}-bit limit on integers")
        return self.budget.measure(super().call_binop(context, op, left, right))
