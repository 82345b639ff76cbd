"""The CuPy stand-in (tests/cupy_standin) has teeth: it refuses what CuPy refuses, exposes only CuPy's names and
keywords (its snapshot matches the installed CuPy wherever one is), and counts syncs, copies and calls.

Run with ``python -m pytest --cupy-standin``; without it only the snapshot's comparison runs (where CuPy is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STANDIN = Path(__file__).resolve().parent / "cupy_standin"
cupy = sys.modules.get("cupy")
pytestmark = pytest.mark.gpu
standin_only = pytest.mark.skipif(not hasattr(cupy, "standin"), reason="the stand-in's own test: --cupy-standin")


@standin_only
def test_no_implicit_conversion_to_or_mixing_with_host_arrays():
    device, host = cupy.arange(6, dtype=cupy.float32), np.arange(6, dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(device)
    for mix in (lambda: device + host, lambda: host + device, lambda: cupy.multiply(device, host),
                lambda: cupy.concatenate([device, host]), lambda: np.add(device, host)):
        with pytest.raises(TypeError, match="cannot be mixed with device arrays"):
            mix()
    with pytest.raises(TypeError, match="cannot be mixed"):
        device[...] = host
    device[...] = cupy.asarray(host)  # the explicit way
    device *= np.float32(2)  # scalars are fine, NumPy's too
    assert np.array_equal(device.get(), 2 * host)


@standin_only
def test_reductions_give_0d_device_arrays_and_conversions_sync():
    cupy.standin.COUNTS.reset()
    total = cupy.arange(5, dtype=cupy.float64).sum()
    assert isinstance(total, cupy.ndarray) and total.shape == ()
    assert float(total) == 10.0 and int(total) == 10 and bool(total)
    assert cupy.standin.COUNTS.snapshot()["syncs"] == 3
    np.exp(total)  # NumPy's ufunc on a device array dispatches to CuPy's, as CuPy does (no sync)
    assert cupy.standin.COUNTS.snapshot()["syncs"] == 3


@standin_only
def test_only_cupys_names_and_keywords_exist():
    with pytest.raises(AttributeError):
        cupy.geomspace  # noqa: B018 - NumPy has it, CuPy 14 does not
    with pytest.raises(TypeError, match="unexpected keyword"):
        cupy.sum(cupy.ones(3), where=cupy.ones(3, dtype=bool))  # NumPy's keyword, not CuPy's
    with pytest.raises(TypeError, match="unexpected keyword"):
        cupy.exp(cupy.ones(3), where=True)
    with pytest.raises(AttributeError, match="no attribute 'resize'"):
        cupy.ones(3).resize  # noqa: B018 - an ndarray method CuPy lacks
    assert cupy.zeros((2, 3), dtype=cupy.float32).sum(axis=1, keepdims=True).shape == (2, 1)


@standin_only
def test_copies_and_calls_are_counted_with_their_caller():
    counts = cupy.standin.COUNTS
    counts.reset()
    x = cupy.asarray(np.ones((4, 4), np.float32))  # one host -> device copy
    y = (x @ x).sum(axis=0)
    host = cupy.asnumpy(y)  # one device -> host copy
    assert counts.snapshot() == {"calls": 3, "launches": 2, "syncs": 0, "to_device": 1, "to_host": 1}  # @, sum launch
    _ = x.reshape(16).T  # a view: a call (reshape), no launch; .T is an attribute
    assert counts.snapshot()["calls"] == 4 and counts.snapshot()["launches"] == 2
    assert np.array_equal(host, np.full(4, 16.0, np.float32))
    assert all(where.startswith(__file__) for _, where in counts.calls)


@standin_only
@pytest.mark.parametrize(("a_shape", "b_shape", "how", "launches"), [
    ((8, 4), (4, 3), "plain", 1),  # 2-D: dot, one cuBLAS call
    ((8, 4), (3, 4), "b transposed", 1),  # a transposed 2-D operand goes to cuBLAS as it is
    ((5, 8, 4), (5, 4, 3), "plain", 1),  # a stack times a stack: one strided-batched GEMM
    ((5, 8, 4), (5, 3, 4), "b transposed", 2),  # a non-contiguous operand above 2-D is copied first
    ((5, 8, 4), (4, 3), "plain", 4),  # a matrix broadcast over a stack: 3 pointer-array kernels + gemmBatched
    ((5, 8, 4), (4, 1), "plain", 4),  # the same for a matrix-vector product on an N-d array
    ((3, 4), (5, 4, 2), "a stacked", 2),  # the matrix as an explicit stack (broadcast_to): one copy + one GEMM
])
def test_matmul_counts_the_kernels_cupy_launches_besides_its_gemm(a_shape, b_shape, how, launches):
    """CuPy 14's matmul (cupy/_core/_routines_linalg.pyx) above 2-D copies non-contiguous operands and, when it
    broadcasts an operand over the stack, builds arrays of pointers: the stand-in counts those kernels too."""
    r = np.random.default_rng(0)
    a, b = (cupy.asarray(r.standard_normal(s).astype(np.float32)) for s in (a_shape, b_shape))
    if how == "b transposed":
        b = b.swapaxes(-1, -2)
    if how == "a stacked":
        a = cupy.broadcast_to(a, (b_shape[0], *a_shape))
    counts = cupy.standin.COUNTS
    counts.reset()
    product = cupy.matmul(a, b)
    assert counts.snapshot()["launches"] == launches, dict(counts.launches)
    np.testing.assert_allclose(cupy.asnumpy(product), np.matmul(cupy.asnumpy(a), cupy.asnumpy(b)), rtol=1e-6)


def test_the_snapshot_is_the_installed_cupys():
    """Regenerated from the real CuPy (it imports without a GPU) and compared: with the Python of $CUPY_PYTHON
    (.ci/run makes a small environment with CuPy for this), else this one if it has the real CuPy."""
    import importlib.machinery
    import os

    python = os.environ.get("CUPY_PYTHON")
    if python is None:
        paths = [p for p in sys.path if Path(p or ".").resolve() != STANDIN]
        if importlib.machinery.PathFinder.find_spec("cupy", paths) is None:
            pytest.skip("no real CuPy here: set CUPY_PYTHON to a Python that has it (pip install cupy-cuda13x)")
        python = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the real package, not the stand-in
    code = (f"import json, runpy, cupy; snapshot = runpy.run_path({str(STANDIN / 'make_snapshot.py')!r})"
            f"['snapshot']; print(json.dumps(snapshot(cupy), sort_keys=True))")
    fresh = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=env,
                                      cwd="/").stdout)
    committed = json.loads((STANDIN / "cupy_api.json").read_text())
    assert fresh["cupy_version"] == committed["cupy_version"], (
        f"CuPy {fresh['cupy_version']} is installed, the snapshot is of {committed['cupy_version']}: regenerate it "
        f"with python tests/cupy_standin/make_snapshot.py (and pin the new version in .ci/run)")
    assert fresh == committed, "differs from the installed CuPy's: python tests/cupy_standin/make_snapshot.py"
