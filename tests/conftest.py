"""Shared test set-up: the NumPy backend by default (GPU tests ask for CuPy themselves)."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm


@pytest.fixture(autouse=True)
def numpy_backend():
    """Every test starts on NumPy, whatever the machine has, and leaves the backend as it found it."""
    tm.set_backend("numpy")
    yield
    tm.set_backend("numpy")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

