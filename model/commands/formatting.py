"""How the commands print what they found: a retrieved text on one line."""

from __future__ import annotations


def one_line(text: str, width: int = 100) -> str:
    """``text`` with its whitespace collapsed, cut to ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
