"""Shared test set-up: the NumPy backend by default (GPU tests ask for CuPy themselves), and ``--cupy-standin``:
the strict NumPy-backed CuPy of tests/cupy_standin/ in place of CuPy, so that the GPU tests run on any machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymixer as tm

STANDIN = Path(__file__).resolve().parent / "cupy_standin"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cupy-standin", action="store_true",
                     help="run with tests/cupy_standin as CuPy (a strict NumPy-backed stand-in: no GPU needed); "
                          "the GPU tests then run instead of skipping")


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--cupy-standin"):
        return
    if "cupy" in sys.modules and not hasattr(sys.modules["cupy"], "standin"):
        raise pytest.UsageError("--cupy-standin: the real CuPy is imported already")
    sys.path.insert(0, str(STANDIN))  # `import cupy` finds the stand-in, here and in the programs tests start
    os.environ["PYTHONPATH"] = os.pathsep.join([str(STANDIN), *filter(None, [os.environ.get("PYTHONPATH")])])
    import cupy

    assert cupy.standin.is_standin, cupy.__file__


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--cupy-standin"):
        return "cupy: the stand-in of tests/cupy_standin (NumPy underneath, CuPy's rules and API on top)"
    return None


# The backend every test starts on: NumPy, whatever the machine has; TINYMIXER_TEST_BACKEND=cupy runs the suite on
# CuPy (python -m tinymixer.tools.gpucheck does, on a GPU)
TEST_BACKEND = os.environ.get("TINYMIXER_TEST_BACKEND", "numpy")


@pytest.fixture(autouse=True)
def numpy_backend():
    """Every test starts on the test backend (NumPy unless told otherwise) and leaves it as it found it."""
    tm.set_backend(TEST_BACKEND)
    yield
    tm.set_backend(TEST_BACKEND)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
