"""PNG figures written atomically (headless matplotlib), for the distillation history and run reports."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geodata.files import atomic_write_bytes

__all__ = ["save_plot"]


def save_plot(path: str | Path, draw: Callable[[Any], None], dpi: int = 110) -> Path:
    """Draw on one 6x4 in axes with ``draw(ax)`` and write the PNG to ``path`` (write, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
