"""What every lesson shares: the quick mode, where figures go, and showing them.

- ``TINYMIXER_QUICK=1`` shrinks sizes and steps so a lesson runs in seconds (CI runs every lesson this way).
- Figures are saved to ``$TINYMIXER_FIGURES`` (default: ``lessons/figures/``) and shown when there is a screen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

INTERACTIVE = "ipykernel" in sys.modules or bool(os.environ.get("DISPLAY"))
if not INTERACTIVE:
    matplotlib.use("Agg")  # headless: write files only
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

QUICK = os.environ.get("TINYMIXER_QUICK") == "1"
FIGURES = Path(os.environ.get("TINYMIXER_FIGURES", Path(__file__).resolve().parent / "figures"))


def pick(full, quick):
    """The full-size value normally, the small one in quick mode."""
    return quick if QUICK else full


def save_figure(fig: plt.Figure, name: str) -> Path:
    """Save the figure as FIGURES/name.png, show it when interactive, and return the path."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")
    if INTERACTIVE:
        plt.show()
    plt.close(fig)
    return path
