"""Plain-text tables for the terminal, aligned for Chinese (double-width) characters."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def width(text: str) -> int:
    """Columns a string takes in a terminal: wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in {"W", "F"} else 1 for ch in text)


def _clip(text: str, limit: int) -> str:
    if width(text) <= limit:
        return text
    out, used = "", 0
    for ch in text:
        w = width(ch)
        if used + w > limit - 1:
            break
        out, used = out + ch, used + w
    return out + "…"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], max_column: int = 48) -> str:
    """A table with a header rule; cells longer than ``max_column`` columns are clipped with an ellipsis."""
    cells = [[_clip(str(c).replace("\n", " "), max_column) for c in row] for row in rows]
    widths = [max([width(h)] + [width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v + " " * (w - width(v)) for v, w in zip(values, widths, strict=True)).rstrip()

    parts = [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    if not rows:
        parts.append("(none)")
    return "\n".join(parts)
