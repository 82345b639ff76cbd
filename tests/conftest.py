"""Shared test set-up: the NumPy backend by default (GPU tests ask for CuPy themselves), and the strict
NumPy-backed CuPy of tests/cupy_standin/ in place of CuPy wherever no GPU works (or with ``--cupy-standin``), so
that the GPU tests run on any machine: ``python -m pytest`` runs them all, on a GPU or on the stand-in."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymixer as tm

STANDIN = Path(__file__).resolve().parent / "cupy_standin"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cupy-standin", action="store_true",
                     help="run with tests/cupy_standin as CuPy (a strict NumPy-backed stand-in: no GPU needed), even "
                          "where a GPU works; without a working GPU it is the default")
    parser.addoption("--no-cupy-standin", action="store_true",
                     help="never the stand-in: without a working GPU the GPU tests skip")


def _standin_wanted(config: pytest.Config) -> tuple[bool, str]:
    """Whether to run with the stand-in, and why: asked for; or no real CuPy that runs a kernel here (so the GPU
    tests run anyway, on the stand-in, instead of skipping). A real CuPy is probed in a child process, so that
    this process can still take the stand-in."""
    if config.getoption("--cupy-standin"):
        return True, "asked for (--cupy-standin)"
    if config.getoption("--no-cupy-standin"):
        return False, ""
    if importlib.util.find_spec("cupy") is None:
        return True, "no CuPy installed"
    probe = subprocess.run([sys.executable, "-c", "import cupy; int(cupy.arange(4).sum())"], capture_output=True,
                           timeout=120)
    return (False, "") if probe.returncode == 0 else (True, "CuPy cannot run a kernel here (no usable GPU)")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["TINYMIXER_BACKEND"] = TEST_BACKEND  # the programs the tests run default to it too (--backend)
    wanted, why = _standin_wanted(config)
    config.cupy_standin_why = why if wanted else None
    if not wanted:
        return
    if "cupy" in sys.modules and not hasattr(sys.modules["cupy"], "standin"):
        raise pytest.UsageError("--cupy-standin: the real CuPy is imported already")
    sys.path.insert(0, str(STANDIN))  # `import cupy` finds the stand-in, here and in the programs tests start
    os.environ["PYTHONPATH"] = os.pathsep.join([str(STANDIN), *filter(None, [os.environ.get("PYTHONPATH")])])
    import cupy

    assert cupy.standin.is_standin, cupy.__file__


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.cupy_standin_why:
        return (f"cupy: the stand-in of tests/cupy_standin (NumPy underneath, CuPy's rules and API on top): "
                f"{config.cupy_standin_why}; the GPU tests run on it")
    return None


# The backend every test starts on: NumPy, whatever the machine has; TINYMIXER_TEST_BACKEND=cupy runs the suite on
# CuPy (python -m tinymixer.tools.gpucheck does, on a GPU)
TEST_BACKEND = os.environ.get("TINYMIXER_TEST_BACKEND", "numpy")


@pytest.fixture(autouse=True)
def numpy_backend(request: pytest.FixtureRequest):
    """Every test starts on the test backend (NumPy unless told otherwise) and leaves it as it found it; a test
    marked ``host`` (its subject is host work: file formats, PyTorch on the CPU, finite differences element by
    element) starts on NumPy whatever the test backend."""
    backend = "numpy" if request.node.get_closest_marker("host") else TEST_BACKEND
    if backend != TEST_BACKEND:  # and the programs it runs (their --backend defaults to $TINYMIXER_BACKEND)
        request.getfixturevalue("monkeypatch").setenv("TINYMIXER_BACKEND", backend)
    tm.set_backend(backend)
    yield
    tm.set_backend(backend)


if TEST_BACKEND != "numpy":
    # Comparisons in the tests see host copies: np.testing's assertions take device arrays (through tm.to_host) when
    # the suite runs on CuPy. Only np.testing, which the library never calls: a library function that hands a device
    # array to NumPy still fails here, as it would on a GPU.
    import functools

    def _on_host(check):
        @functools.wraps(check)
        def wrapped(*args, **kwargs):
            return check(*(tm.to_host(a) if tm.backend.is_device_array(a) else a for a in args), **kwargs)
        return wrapped

    for _name in ("assert_array_equal", "assert_allclose", "assert_array_less", "assert_array_almost_equal",
                  "assert_equal"):
        setattr(np.testing, _name, _on_host(getattr(np.testing, _name)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
