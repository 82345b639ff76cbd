"""The array backend: the only module that knows CuPy exists.

Every other module writes its math once against an "array module" ``xp`` (``numpy`` or ``cupy``, which share
one API) and asks this module which one to use. CuPy cannot even be imported without CUDA, so it is imported
here, lazily and guarded.

Choosing the backend, first match wins:
1. ``set_backend("numpy" | "cupy" | "auto")`` called by the program;
2. the environment variable ``TINYMIXER_BACKEND=numpy|cupy|auto``;
3. ``auto``: CuPy when it imports *and* a CUDA device actually runs a kernel, else NumPy.

Asking for ``cupy`` where it cannot run is an error that says why, never a silent fallback to NumPy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

ENV_VAR = "TINYMIXER_BACKEND"
_CHOICES = ("numpy", "cupy", "auto")

# What to install for a working GPU userland (setup.cfg's extras: CuPy with its CUDA libraries and NCCL)
INSTALL_HINT = ("Install CuPy with its CUDA libraries: pip install 'tinymixer[gpu]' for a CUDA 12 driver, "
                "'tinymixer[gpu-cuda13]' for CUDA 13 (nvidia-smi shows the driver's CUDA version)")

_backend: ModuleType | None = None  # the chosen array module, decided on first use
_cupy: ModuleType | None = None  # the cupy module once it has been imported and shown to work


def _load_cupy() -> tuple[ModuleType | None, str]:
    """Import CuPy and run one tiny kernel. Returns (cupy or None, the reason it is unusable)."""
    global _cupy
    if _cupy is not None:
        return _cupy, ""
    try:
        import cupy  # the one guarded import of cupy in the project
    except Exception as exc:  # ImportError, or a CUDA library missing at import time
        reason = f"CuPy does not import ({type(exc).__name__}: {exc})"
        return None, f"{reason}. {INSTALL_HINT}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy imports but sees no CUDA device (is there a GPU, and its driver?)"
    except Exception as exc:
        return None, f"CuPy imports but finds no CUDA driver or device ({type(exc).__name__}: {exc})"
    try:
        int((cupy.arange(4, dtype=cupy.float32) * 2).sum())  # compiles and runs a kernel: the real test
    except Exception as exc:
        # a GPU is there but a CUDA library is not: the driver alone does not bring NVRTC (kernel compilation)
        return None, (f"CuPy sees a GPU but cannot compile or run a kernel ({type(exc).__name__}: {exc}); the "
                      f"CUDA libraries are missing or do not match. {INSTALL_HINT}")
    _cupy = cupy
    return cupy, ""


def _resolve(name: str, source: str = "") -> ModuleType:
    """The module a backend name asks for; ``source`` says where the name came from, for the error."""
    if not isinstance(name, str):
        raise ValueError(f"a backend is named by a string: one of {', '.join(_CHOICES)}; got {name!r}")
    name = name.strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"{source}unknown backend {name!r}: choose one of {', '.join(_CHOICES)}")
    if name == "numpy":
        return np
    cupy, why_not = _load_cupy()
    if cupy is not None:
        return cupy
    if name == "cupy":
        raise RuntimeError(
            f"backend 'cupy' was requested but {why_not}. Use the NumPy backend instead "
            f"(set_backend('numpy') or {ENV_VAR}=numpy)."
        )
    return np  # auto, and no usable GPU


def set_backend(name: str) -> ModuleType:
    """Choose the array library for new models and arrays: 'numpy', 'cupy' or 'auto'. Returns it."""
    global _backend
    _backend = _resolve(name)
    return _backend


def get_backend() -> ModuleType:
    """The array module in use (``numpy`` or ``cupy``), chosen on first call (see the module docstring)."""
    global _backend
    if _backend is None:
        _backend = _resolve(os.environ.get(ENV_VAR, "auto"), source=f"${ENV_VAR}: ")
    return _backend


def backend_name() -> str:
    return get_backend().__name__


def array_module(*arrays: Any) -> ModuleType:
    """The array module that owns these arrays: ``cupy`` if any is a CuPy array, else ``numpy``.

    Layer code calls this on its inputs (the ``xp = array_module(x)`` idiom), so a function written once runs on
    whichever device its arguments live on.
    """
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def fused(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(xp, *arrays)``, an elementwise function written with array operators and ``xp``'s ufuncs only, as one
    kernel on a GPU.

    On NumPy arrays ``fn(np, ...)`` runs as written (one pass per operation; callers run it on cache-sized
    blocks). On CuPy arrays it runs as ``cupy.fuse``: CuPy traces the operations once per argument types and
    compiles them into a single kernel, so ten operations cost one launch and one pass through memory instead of
    ten. Should CuPy fail to compile it, it runs unfused (the same numbers, more launches) after one warning.
    """
    kernels: dict[Any, Callable[..., Any]] = {}

    def call(*args: Any) -> Any:
        xp = array_module(*args)
        if xp is np:
            return fn(np, *args)
        kernel = kernels.get(xp)
        if kernel is None:
            def bound(*arrays: Any) -> Any:
                return fn(xp, *arrays)

            kernel = kernels[xp] = xp.fuse(kernel_name=fn.__name__.strip("_"))(bound)
        if kernel is fn:
            return fn(xp, *args)
        try:
            return kernel(*args)
        except Exception as exc:  # noqa: BLE001 - a compiler's refusal; the unfused function then decides
            result = fn(xp, *args)  # raises if the arguments themselves are wrong
            kernels[xp] = fn
            warnings.warn(f"cupy.fuse could not compile {fn.__name__} ({type(exc).__name__}: {exc}); it runs "
                          f"unfused, one kernel per operation", RuntimeWarning, stacklevel=2)
            return result

    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def is_device_array(a: Any) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_device(a: Any, dtype: Any = None) -> Any:
    """Move (or cast) an array to the current backend, optionally converting its dtype."""
    xp = get_backend()
    return xp.asarray(a, dtype=dtype)


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy (or view) of any array: CuPy arrays are copied back from the GPU."""
    if is_device_array(a):
        return a.get()
    return np.asarray(a)


def use_device(index: int) -> None:
    """Make GPU ``index`` (counted on this machine) the current CuPy device, before any array is made: with one
    process per GPU, each process takes the GPU of its local rank. Does nothing without a GPU."""
    try:
        import cupy
    except Exception:  # no CuPy: nothing to choose
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return
    if count:
        cupy.cuda.Device(index % count).use()


def device_count() -> int:
    """The number of CUDA GPUs CuPy sees here (0 without a usable CuPy)."""
    cupy, _ = _load_cupy()
    if cupy is None:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def nccl_module() -> ModuleType:
    """CuPy's NCCL bindings (``cupy.cuda.nccl``), for the data-parallel all-reduce of GPU arrays."""
    cupy, why_not = _load_cupy()
    if cupy is None:
        raise RuntimeError(f"NCCL needs CuPy on a GPU, but {why_not}")
    from cupy.cuda import nccl

    if not nccl.available:
        raise RuntimeError("CuPy finds no NCCL library: pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 "
                           "(CUDA 13), which the extras tinymixer[gpu] and tinymixer[gpu-cuda13] include")
    return nccl


def nccl_allreduce_sum_(communicator: Any, buffer: Any) -> Any:
    """Sum a contiguous GPU array over the ranks of an NCCL communicator, in place, on the current stream: the
    data stays on the GPU (no host copy, no host synchronisation)."""
    nccl = nccl_module()
    kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    stream = _cupy.cuda.get_current_stream().ptr
    communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[buffer.dtype], nccl.NCCL_SUM, stream)
    return buffer


def synchronize() -> None:
    """Wait for all queued GPU work (a no-op on NumPy). Timing code calls this before reading the clock."""
    if _cupy is not None and get_backend() is _cupy:
        _cupy.cuda.Device().synchronize()


def __getattr__(name: str) -> Any:
    """Names that moved, forwarded for one release with a DeprecationWarning."""
    if name == "keep_freed_host_memory":
        warnings.warn("tinymixer.backend.keep_freed_host_memory moved to tinymixer.util.host (call "
                      "tinymixer.tune_host() to tune the process)", DeprecationWarning, stacklevel=2)
        from .util.host import keep_freed_host_memory
        return keep_freed_host_memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
