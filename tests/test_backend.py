"""The backend switch: one module decides NumPy or CuPy, asking for CuPy where it can't run is an error."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import tinymixer as tm
from tinymixer import backend

CUPY_USABLE = backend._load_cupy()[0] is not None


def test_environment_variable_chooses_numpy(monkeypatch):
    monkeypatch.setattr(backend, "_backend", None)  # as in a fresh process
    monkeypatch.setenv("TINYMIXER_BACKEND", "numpy")
    assert tm.get_backend() is np and tm.backend_name() == "numpy"


def test_auto_without_gpu_is_numpy(monkeypatch):
    if CUPY_USABLE:
        pytest.skip("a GPU is usable here, so auto picks CuPy")
    monkeypatch.setattr(backend, "_backend", None)
    monkeypatch.setenv("TINYMIXER_BACKEND", "auto")
    assert tm.get_backend() is np


def test_unknown_backend_name_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="numpy, cupy, auto"):
        tm.set_backend("tensorflow")
    monkeypatch.setattr(backend, "_backend", None)
    monkeypatch.setenv("TINYMIXER_BACKEND", "jax")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        tm.get_backend()


def test_asking_for_cupy_without_gpu_is_a_clear_error():
    if CUPY_USABLE:
        pytest.skip("CuPy runs here")
    with pytest.raises(RuntimeError, match=r"backend 'cupy' was requested but .*set_backend\('numpy'\)"):
        tm.set_backend("cupy")


def test_host_device_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(tm.to_host(tm.to_device(x)), x)
    assert tm.to_device(x, dtype=np.float32).dtype == np.float32
    assert tm.array_module(x) is np
    tm.synchronize()  # a no-op on NumPy


def test_no_module_but_backend_imports_cupy():
    package = pathlib.Path(tm.__file__).parent
    offenders = [p.name for p in package.glob("*.py")
                 if p.name != "backend.py" and re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)]
    assert offenders == []


def test_import_asks_openblas_threads_to_sleep_but_keeps_a_user_setting():
    import os
    import subprocess
    import sys

    code = "import os, tinymixer; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "4"
    env["OPENBLAS_THREAD_TIMEOUT"] = "20"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "20"


def test_keep_freed_host_memory_on_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert tm.keep_freed_host_memory() is True
