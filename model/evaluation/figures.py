"""Plots as PNG: one way to render a matplotlib Figure for a report, an artifact or a file."""

from __future__ import annotations

import io
from pathlib import Path


def figure_png(figure, path: Path | None = None, *, dpi: float | None = None) -> bytes:
    """Render a matplotlib ``Figure`` as PNG.

    Args:
        figure: a ``matplotlib.figure.Figure`` (built without pyplot, so no global state or
            backend is involved).
        path: also write the PNG here (its folder is created).
        dpi: resolution; None: the figure's own.

    Returns:
        The PNG's bytes.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi if dpi is not None else "figure")
    data = buffer.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
