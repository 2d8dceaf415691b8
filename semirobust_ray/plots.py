"""Headless matplotlib figures written atomically as PNG (clusters and CI have no display)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from semirobust_ray.storage import atomic_write_bytes


def new_figure(**kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots(**kwargs)`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG that a reader never sees half-written, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
