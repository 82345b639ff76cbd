"""Tuning the host process for training, as an explicit opt-in: ``tinymixer.tune_host()``.

Importing tinymixer changes nothing in the process. The programs (``examples/*.py``, ``experiments/*.py``, the
benchmarks) call ``tune_host()`` first, before NumPy loads, and a library user may do the same:

    import tinymixer as tm     # loads nothing yet (the package's names are imported on first use)
    tm.tune_host()             # before `import numpy`, so that the BLAS library reads its settings
    import numpy as np

It does two things, each measured on a tiny/4 training step (batch 128, 2-core Xeon, OpenBLAS; docs/performance.md):

1. **BLAS threads sleep at once.** A BLAS library's worker threads keep spinning after every call before they sleep
   (OpenBLAS: about 2^28 cycles; Intel's OpenMP runtime, which MKL uses: 200 ms). While the batch's shards run on
   tinymixer's own threads (``chunks.for_shards``) that spinning takes cores the work needs. The settings are
   environment variables the library reads once, when it loads: so this part works only before NumPy is imported
   (or set them in the shell: ``OPENBLAS_THREAD_TIMEOUT=4 KMP_BLOCKTIME=0``). A value already set is kept.
2. **Freed host memory is kept** for the next step instead of being returned to the OS (glibc's ``mallopt``; works
   at any time). A step allocates its activations afresh (arrays of 1-32 MB); by default glibc serves those sizes
   with mmap and hands them back on free, so every step pays a page fault per 4 KB page when it first writes them.
   The process's resident memory then stays at its peak. ``TINYMIXER_KEEP_FREED_MEMORY=0`` opts out.

Nothing here imports NumPy.
"""

from __future__ import annotations

import os
import sys
import warnings

BLAS_THREADS_SLEEP_AT_ONCE = {"OPENBLAS_THREAD_TIMEOUT": "4", "KMP_BLOCKTIME": "0"}
KEEP_FREED_MEMORY_ENV = "TINYMIXER_KEEP_FREED_MEMORY"

_tuned: dict[str, bool] = {}  # what tune_host() did in this process (empty until it is called)


def tune_host(keep_freed_memory: bool | None = None) -> dict[str, bool]:
    """Tune this process for training (see the module's docstring); safe to call more than once.

    ``keep_freed_memory``: None follows ``$TINYMIXER_KEEP_FREED_MEMORY`` (unset or 1: keep; 0: leave glibc's malloc
    as it is). Returns what this call (or an earlier one) did: ``{"blas_threads_sleep": ..., "keeps_freed_memory":
    ...}``; ``blas_threads_sleep`` says whether the BLAS variables were in place (set here, or a value of the user's
    kept) before NumPy loaded; False when NumPy was already loaded at every call (they may still be in place,
    from the shell or a parent process, as ``tuned_environment`` gives the benchmarks' workers)."""
    if keep_freed_memory is None:
        if os.environ.get("TINYMIXER_KEEP_MALLOC"):  # the old name, which read backwards (it meant "do not keep")
            warnings.warn("TINYMIXER_KEEP_MALLOC is renamed: use TINYMIXER_KEEP_FREED_MEMORY=0 to leave glibc's "
                          "malloc as it is", FutureWarning, stacklevel=2)
            os.environ.setdefault(KEEP_FREED_MEMORY_ENV, "0")
        keep_freed_memory = os.environ.get(KEEP_FREED_MEMORY_ENV, "1") != "0"
    blas_loaded = "numpy" in sys.modules  # NumPy loads its BLAS as it is imported
    if not blas_loaded:
        for name, value in BLAS_THREADS_SLEEP_AT_ONCE.items():
            os.environ.setdefault(name, value)
    _tuned["blas_threads_sleep"] = _tuned.get("blas_threads_sleep", False) or not blas_loaded
    _tuned["keeps_freed_memory"] = _tuned.get("keeps_freed_memory", False) or (
        keep_freed_memory and keep_freed_host_memory())
    return dict(_tuned)


def tuned_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the BLAS settings added where unset: the environment of a
    child process (a benchmark's worker) that should run as ``tune_host`` would have set it up."""
    return {**BLAS_THREADS_SLEEP_AT_ONCE, **(os.environ if env is None else env)}


def host_tuning() -> dict[str, bool]:
    """What ``tune_host`` did in this process so far (both False before it is called)."""
    return {"blas_threads_sleep": _tuned.get("blas_threads_sleep", False),
            "keeps_freed_memory": _tuned.get("keeps_freed_memory", False)}


def keep_freed_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS. Returns whether it
    could (False off glibc, e.g. on macOS or Windows, where nothing changes). Measured: 8-10% of a tiny/4 step when
    first written; 5-7% on one thread and 2-3% on two in December 2026. mmap only above 32 MB (glibc's largest
    allowed threshold), no trimming of the heap, 64 MB of padding at its top."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(m_mmap_threshold, 32 << 20)
    ok &= mallopt(m_trim_threshold, 2**31 - 1)
    ok &= mallopt(m_top_pad, 64 << 20)
    return bool(ok)
