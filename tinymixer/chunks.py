"""Splitting work to use the CPU well: elementwise work in cache-sized row blocks, and a batch in shards, one per
core. How the NumPy path keeps up with its GEMMs.

Row blocks. GELU and LayerNorm do a handful of arithmetic operations per element, each a separate NumPy call. On a
whole (B*S, D_C) array every call is a full pass through main memory; on a block of ~128K elements (512 KB of
float32) the passes after the first hit the CPU cache and cost a fraction. ``for_row_blocks(kernel, *arrays)``
calls ``kernel(*blocks)`` for consecutive row blocks of 2-D arrays that share their number of rows (a (N, 1) array
of per-row values rides along with an (N, C) one). A kernel writes its results into blocks of output arrays it was
given (``out=`` everywhere), so nothing is allocated per block. On CuPy the kernel runs once on the whole arrays:
the GPU does its own blocking.

Batch shards. While BLAS runs a matrix multiply on every core, a NumPy ufunc runs on one, and spreading the ufunc
calls of one layer over threads gains little: each call is short, and the threads queue for the GIL between calls
(measured here: GELU 1.26x faster on 2 threads in isolation, not at all inside a training step). Whole independent
pieces of work do scale: ``for_shards(fn, shards)`` runs ``fn`` on each shard of a batch in its own thread, with
BLAS held to one thread per call meanwhile, so each core runs a whole forward or backward of its share of the
images -- its matrix multiplies and its elementwise work. (Measured: a 2-thread ``tiny/4`` training step 25%
faster than with 2-thread BLAS on the whole batch.) Inside a shard, blocks run serially on the shard's thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .backend import array_module

# Elements per block: 512 KB of float32, a few arrays of which stay in a core's L2 cache (2 MB here). Measured
# on whole training steps: 64K and 128K equal on one thread, 128K 4% faster with two shards (fewer ufunc calls,
# so fewer waits for the GIL); 32K and 256K slower.
BLOCK_ELEMENTS = 1 << 17
THREADS_ENV = "TINYMIXER_THREADS"

MIN_SHARD = 8  # images per shard at least: below that, a shard's matrix multiplies get too small to be efficient

_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_scratch = threading.local()  # per-thread scratch blocks, reused across calls
_worker = threading.local()  # .busy is True while a pool thread runs a shard or a share of blocks


def num_threads() -> int:
    """Threads to split work over: $TINYMIXER_THREADS, else the BLAS thread settings, else the usable cores; and 1
    inside work that is already split (a shard's layers run on the shard's thread)."""
    if getattr(_worker, "busy", False):
        return 1
    ours = os.environ.get(THREADS_ENV, "").strip()
    if ours:  # tinymixer's own setting: a wrong value is the user's mistake to hear about, not to skip
        if not ours.isdigit() or int(ours) < 1:
            raise ValueError(f"{THREADS_ENV}={ours!r} is not a number of threads: give a whole number, at least 1, "
                             f"or unset it (then the BLAS thread settings decide, else the usable cores)")
        return int(ours)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # other libraries': where valid
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_threads
    if _pool is None or _pool_threads < threads:  # grows, never shrinks: a smaller job uses fewer of its threads
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tinymixer"), threads
    return _pool


def rows(a: Any) -> Any:
    """``a`` as a 2-D (rows, last axis) array: a view when ``a`` is C-contiguous, a copy otherwise -- so outputs
    must always be allocated C-contiguous (``xp.empty(shape)``, not ``empty_like`` of a transposed array)."""
    return a.reshape(-1, a.shape[-1])


def scratch(name: str, like: Any) -> Any:
    """A per-thread scratch array of ``like``'s shape and dtype, reused across blocks and calls (never shared
    between threads). For temporaries inside a kernel."""
    if not isinstance(like, np.ndarray):  # CuPy: one call per layer, let its memory pool serve it
        return array_module(like).empty_like(like)
    cache = _scratch.__dict__
    key = (name, like.dtype.str)
    buffer = cache.get(key)
    if buffer is None or buffer.size < like.size:
        buffer = cache[key] = np.empty(max(like.size, BLOCK_ELEMENTS), dtype=like.dtype)
    return buffer[: like.size].reshape(like.shape)


def for_row_blocks(kernel: Callable[..., Any], *arrays: Any, threads: int | None = None) -> list[Any]:
    """Run ``kernel`` on consecutive row blocks of the 2-D ``arrays`` (all with the same number of rows) and
    return its return values in block order (for partial sums: adding them in that order is deterministic).

    Rows are grouped into blocks of about BLOCK_ELEMENTS elements of the widest array; the blocks are split into
    one contiguous share per thread. Non-NumPy arrays (CuPy) get a single call on the whole arrays.
    """
    if not isinstance(arrays[0], np.ndarray):
        return [kernel(*arrays)]
    num_rows = arrays[0].shape[0]
    width = max(a.shape[1] for a in arrays)
    per_block = max(1, BLOCK_ELEMENTS // width)
    starts = list(range(0, num_rows, per_block))
    threads = min(threads or num_threads(), len(starts))

    def run(first: int, last: int) -> list[Any]:  # blocks first..last-1, in order
        return [kernel(*(a[start:start + per_block] for a in arrays)) for start in starts[first:last]]

    if threads <= 1:
        return run(0, len(starts))
    bounds = np.linspace(0, len(starts), threads + 1).astype(int)
    futures = [_executor(threads).submit(_as_worker, run, bounds[i], bounds[i + 1]) for i in range(threads)]
    return [value for future in futures for value in future.result()]  # result() re-raises a kernel's error


def batch_shards(batch_size: int, xp: Any = np) -> list[slice]:
    """How to cut a batch for ``for_shards``: one contiguous shard per thread (as equal as possible), each at least
    MIN_SHARD images; a single shard on one thread, for small batches, and on the GPU (CuPy)."""
    count = 1 if xp is not np else max(1, min(num_threads(), batch_size // MIN_SHARD))
    bounds = np.linspace(0, batch_size, count + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def for_shards(fn: Callable[[Any], Any], shards: list[Any]) -> list[Any]:
    """``[fn(shard) for shard in shards]``, each in its own thread when there are several, with BLAS held to one
    thread per call meanwhile (one core per shard; two-thread matrix multiplies from two shards would fight
    over two cores). Results in the shards' order."""
    if len(shards) == 1:
        return [fn(shards[0])]
    with _blas_threads(1):
        futures = [_executor(len(shards)).submit(_as_worker, fn, shard) for shard in shards]
        return [future.result() for future in futures]  # result() re-raises a shard's error


def _as_worker(fn: Callable[..., Any], *args: Any) -> Any:
    _worker.busy = True  # nested splitting inside fn runs serially on this thread
    _one_blas_thread_on_this_thread()
    try:
        return fn(*args)
    finally:
        _worker.busy = False


_blas_controller: Any = None
_blas_controller_lock = threading.Lock()


def _blas_controller_or_none() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded (made once), or None without threadpoolctl."""
    global _blas_controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # declared as a dependency; without it the shards still compute the same numbers
        return None
    with _blas_controller_lock:
        if _blas_controller is None:
            _blas_controller = ThreadpoolController()
    return _blas_controller


def _blas_threads(limit: int) -> Any:
    """A context that holds the BLAS library's thread pool to ``limit`` threads (threadpoolctl: the standard,
    pure-Python way to reach OpenBLAS's/MKL's runtime setting; NumPy itself has no API for it)."""
    controller = _blas_controller_or_none()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=limit, user_api="blas")


def _thread_local_blas_libraries() -> list[Any]:
    """The loaded BLAS libraries whose thread count is a per-thread setting: MKL (threadpoolctl sets it with
    MKL_Set_Num_Threads_Local) and OpenBLAS built on OpenMP (some Linux distributions' NumPy: its count follows
    the calling thread's OpenMP setting). The pthreads OpenBLAS of NumPy's wheels has one global setting, which
    ``_blas_threads`` in the calling thread covers."""
    controller = _blas_controller_or_none()
    if controller is None:
        return []
    return [library for library in controller.lib_controllers
            if library.internal_api == "mkl"
            or (library.internal_api == "openblas" and getattr(library, "threading_layer", None) == "openmp")]


def _one_blas_thread_on_this_thread() -> None:
    """Hold this pool thread's own BLAS thread count at one, once for the thread's life (the pool's threads are
    tinymixer's, and each already is one of the cores the work is split over). Needed for the per-thread BLAS
    libraries: the limit that ``for_shards`` sets in the calling thread does not reach other threads, so without
    this each shard ran two-thread matrix multiplies on two cores. Measured, two-thread tiny/4 training step:
    with an MKL-linked NumPy 441-469 ms before, 391-394 ms after; with Debian's OpenMP OpenBLAS 712-719 -> 428-438."""
    if getattr(_worker, "one_blas_thread", False):
        return
    _worker.one_blas_thread = True
    for library in _thread_local_blas_libraries():
        library.set_num_threads(1)
