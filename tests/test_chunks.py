"""The block runner behind the fast elementwise layers: every row once, results in order, same bits on any
number of threads, errors surface."""

from __future__ import annotations

import numpy as np
import pytest

from tinymixer import chunks
from tinymixer.nn.layers import _gelu_bias_forward, gelu_backward, layer_norm_backward, layer_norm_forward


def test_every_row_is_visited_once_and_results_come_in_block_order(monkeypatch):
    monkeypatch.setattr(chunks, "BLOCK_ELEMENTS", 40)  # 10 rows of width 4 per block
    x = np.zeros((95, 4))
    starts = []

    def kernel(block, row_ids):
        block += 1
        starts.append(int(row_ids[0, 0]))
        return int(row_ids[0, 0])

    ids = np.arange(95)[:, None]
    results = chunks.for_row_blocks(kernel, x, ids, threads=3)
    assert np.all(x == 1)  # each row exactly once
    assert results == list(range(0, 95, 10)) and sorted(starts) == results


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_layers_give_identical_bits_on_any_number_of_threads(monkeypatch, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 17, 48)).astype(np.float32)
    scale, bias = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    # The block size must stay the same (a ufunc's SIMD body and scalar tail may round differently, and partial
    # sums follow the blocks); the number of threads only changes who computes which block.
    monkeypatch.setattr(chunks, "BLOCK_ELEMENTS", 1024)  # many blocks
    monkeypatch.setenv(chunks.THREADS_ENV, "1")
    reference = _run_layers(x, scale, bias)
    monkeypatch.setenv(chunks.THREADS_ENV, threads)
    for a, b in zip(reference, _run_layers(x, scale, bias), strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)


def _run_layers(x, scale, bias):
    y, cache = _gelu_bias_forward(x.copy(), bias)
    dx = gelu_backward(x, cache)
    z, ln_cache = layer_norm_forward(x, scale, bias)
    dz, dscale, dbias = layer_norm_backward(x, ln_cache)
    return y, dx, z, dz, dscale, dbias


def test_kernel_errors_surface():
    def kernel(block):
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        chunks.for_row_blocks(kernel, np.zeros((1000, 100)), threads=2)


def test_thread_count_follows_the_environment(monkeypatch):
    monkeypatch.setenv(chunks.THREADS_ENV, "3")
    assert chunks.num_threads() == 3
    for wrong in ("abc", "0", "-3", "2.5"):  # tinymixer's own variable: a clear error, not silently skipped
        monkeypatch.setenv(chunks.THREADS_ENV, wrong)
        with pytest.raises(ValueError, match=f"TINYMIXER_THREADS='{wrong}' is not a number of threads"):
            chunks.num_threads()
    monkeypatch.setenv(chunks.THREADS_ENV, "3")
    monkeypatch.delenv(chunks.THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert chunks.num_threads() == 1
