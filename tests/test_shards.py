"""Batch shards: one per thread, each through the whole network on its own thread. The same numbers as one
unsharded pass (up to float rounding), errors surface, BLAS is held to one thread per shard meanwhile."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import small_model

import tinymixer as tm
from tinymixer import chunks


def _step(model, images, labels):
    logits = model.forward(images)
    loss, dlogits = tm.softmax_cross_entropy(logits, labels)
    dimages = model.backward(dlogits)
    return logits, dimages, dict(model.grads)


def test_sharded_step_equals_unsharded(monkeypatch):
    monkeypatch.setattr(chunks, "MIN_SHARD", 4)
    r = np.random.default_rng(0)
    images, labels = r.standard_normal((20, 8, 8, 3)), r.integers(0, 3, 20)
    monkeypatch.setenv(chunks.THREADS_ENV, "1")
    reference = _step(small_model(), images, labels)
    monkeypatch.setenv(chunks.THREADS_ENV, "3")
    assert [s.stop - s.start for s in chunks.batch_shards(20)] == [6, 7, 7]
    model = small_model()
    logits, dimages, grads = _step(model, images, labels)
    np.testing.assert_allclose(logits, reference[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dimages, reference[1], rtol=1e-12, atol=1e-15)
    assert list(grads) == list(model.params)
    for name, g in grads.items():
        np.testing.assert_allclose(g, reference[2][name], rtol=1e-11, atol=1e-14, err_msg=name)
    # and the same bits again on the same number of threads: shards are summed in a fixed order
    again = _step(small_model(), images, labels)
    for name, g in grads.items():
        assert np.array_equal(g, again[2][name]), name


@pytest.mark.parametrize("threads,batch,sizes", [("2", 128, [64, 64]), ("2", 15, [15]), ("3", 24, [8, 8, 8]),
                                                 ("4", 20, [10, 10]), ("1", 128, [128])])
def test_batch_shards_one_per_thread_and_never_tiny(monkeypatch, threads, batch, sizes):
    monkeypatch.setenv(chunks.THREADS_ENV, threads)
    shards = chunks.batch_shards(batch)
    assert [s.stop - s.start for s in shards] == sizes
    assert shards[0].start == 0 and shards[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))


def test_no_shards_on_other_array_modules_nor_inside_a_shard(monkeypatch):
    monkeypatch.setenv(chunks.THREADS_ENV, "2")
    assert len(chunks.batch_shards(128, xp=object())) == 1  # CuPy: the GPU is one device
    inner = chunks.for_shards(lambda s: len(chunks.batch_shards(128)), chunks.batch_shards(128))
    assert inner == [1, 1]  # no threads inside threads


def test_shards_run_with_one_blas_thread_and_restore_it(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setenv(chunks.THREADS_ENV, "2")

    numpy_blas = _numpy_blas_path(threadpoolctl)

    def blas_threads(_=None):
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["filepath"] == numpy_blas]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        inside = chunks.for_shards(blas_threads, chunks.batch_shards(64))
        assert all(n == [1] * len(blas_threads()) for n in inside)
        assert all(n == 2 for n in blas_threads())


def _numpy_blas_path(threadpoolctl):
    """The BLAS library NumPy itself loaded (other libraries, e.g. PyTorch's, may be loaded by other tests)."""
    import os

    numpy_dir = os.path.dirname(np.__file__)  # a prefix of the wheels' numpy.libs/ folder too
    blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    paths = [lib["filepath"] for lib in blas if lib["filepath"].startswith(numpy_dir)]
    if not paths:  # a NumPy built against a BLAS outside it (conda's, with MKL): the one its build names
        try:
            name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]  # e.g. "mkl-sdl"
        except (TypeError, KeyError):  # a NumPy older than its build-info dicts
            name = ""
        paths = [lib["filepath"] for lib in blas if name and lib["internal_api"] in name]
    if not paths:
        pytest.skip("NumPy's BLAS is not one threadpoolctl sees")
    return paths[0]


def test_shard_threads_set_their_own_count_of_a_per_thread_blas(monkeypatch):
    """MKL's thread count is per thread: the limit for_shards sets in the calling thread does not reach the
    shards' threads, so each pool thread must set its own, to one, and the calling thread's stays as it was."""
    import threading

    calls = []

    class PerThreadBlas:  # stands in for threadpoolctl's MKL controller
        def set_num_threads(self, n):
            calls.append((threading.get_ident(), n))

    monkeypatch.setattr(chunks, "_thread_local_blas_libraries", lambda: [PerThreadBlas()])
    monkeypatch.setattr(chunks, "_pool", None)  # fresh pool threads, which have not set theirs yet
    monkeypatch.setattr(chunks, "_pool_threads", 0)
    monkeypatch.setenv(chunks.THREADS_ENV, "2")
    both_running = threading.Barrier(2, timeout=10)  # the two shards meet, so they run on two threads

    def shard_thread(shard):
        both_running.wait()
        return threading.get_ident()

    for _ in range(3):
        shard_threads = chunks.for_shards(shard_thread, chunks.batch_shards(64))
        assert len(set(shard_threads)) == 2 and threading.get_ident() not in shard_threads
    assert sorted(calls) == sorted((ident, 1) for ident in shard_threads)  # once per thread, not per call


def test_which_blas_libraries_keep_a_per_thread_count(monkeypatch):
    from types import SimpleNamespace as Library

    libraries = [Library(internal_api="openblas", threading_layer="pthreads"),  # NumPy's wheels: one global count
                 Library(internal_api="openblas", threading_layer="openmp"),  # per thread, as OpenMP's setting
                 Library(internal_api="mkl", threading_layer="intel"),  # MKL_Set_Num_Threads_Local
                 Library(internal_api="blis", threading_layer="pthreads")]
    monkeypatch.setattr(chunks, "_blas_controller_or_none", lambda: Library(lib_controllers=libraries))
    assert chunks._thread_local_blas_libraries() == libraries[1:3]
    monkeypatch.setattr(chunks, "_blas_controller_or_none", lambda: None)  # no threadpoolctl
    assert chunks._thread_local_blas_libraries() == []


def test_an_error_in_a_shard_reaches_the_caller(monkeypatch):
    monkeypatch.setenv(chunks.THREADS_ENV, "2")

    def fail_on_second(shard):
        if shard.start:
            raise ValueError("shard failed")
        return shard

    with pytest.raises(ValueError, match="shard failed"):
        chunks.for_shards(fail_on_second, chunks.batch_shards(64))


def test_backward_checks_the_batch_of_dlogits():
    model = small_model()
    model.forward(np.zeros((4, 8, 8, 3)))
    with pytest.raises(ValueError, match="4 images"):
        model.backward(np.zeros((3, 3)))
    model.backward(np.zeros((4, 3)))  # the caches survived the mistake
