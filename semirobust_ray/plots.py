"""Headless matplotlib figures rendered to PNG bytes (clusters and CI have no display); the
caller stores them (:class:`semirobust_ray.storage.Store` writes atomically)."""

from __future__ import annotations

import io
from typing import Any


def new_figure(**kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots(**kwargs)`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
