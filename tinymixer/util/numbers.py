"""What counts as a whole number where an argument is a count or a size: a Python or NumPy integer, not a bool
(``True`` is an int to Python, and a size of ``True`` is a mistake), at least ``low``."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_whole(value: Any, low: int | None = None) -> bool:
    """``value`` is an integer (Python's or NumPy's, not a bool), and at least ``low`` when given."""
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    return whole and (low is None or value >= low)
