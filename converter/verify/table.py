"""The verify table: one row per check, columns check, result, numbers, tolerance, status."""
from __future__ import annotations

from collections.abc import Sequence

from converter.verify.checks import Check

HEADER = ("check", "result", "numbers", "tolerance", "status")
RESULT_WIDTH = 72


def render(checks: Sequence[Check]) -> str:
    """A plain-text table; long results wrap inside their column so the status stays aligned."""
    rows = [HEADER] + [(c.name, c.result, c.numbers, c.tolerance, c.status) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    widths[1] = min(widths[1], RESULT_WIDTH)
    lines = []
    for n, row in enumerate(rows):
        wrapped = _wrap(row[1], widths[1])
        for k, part in enumerate(wrapped):
            cells = [row[0], part, row[2], row[3], row[4]] if k == 0 else ["", part, "", "", ""]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, current = text.split(" "), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return lines + [current]
