"""Matplotlib figures without pyplot: headless on clusters and CI (no display, no backend
switch), and displayable as they are in a notebook; :func:`png_bytes` renders one for the
report (:class:`semirobust_ray.storage.Store` writes it atomically)."""

from __future__ import annotations

import io
from typing import Any


def new_figure(**kwargs: Any) -> tuple[Any, Any]:
    """A ``matplotlib.figure.Figure`` (``figsize``, ``dpi``, ...) and its one Axes."""
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    return fig, fig.subplots()


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes."""
    # Again, even where the figure's maker laid it out already: with a twin and a secondary
    # axis one pass does not settle, and frontier.png comes out with a looser legend.
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
