"""Matplotlib helpers for the experiments: the Agg backend, one style, saving."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save"]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 10,
                         "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8,
                         "legend.framealpha": 0.85})
    return plt


def save(fig, path) -> Path:
    """Save `fig` as PNG at `path` (tight bounding box) and close it."""
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
