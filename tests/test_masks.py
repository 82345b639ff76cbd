"""Keep masks as hashes of positions (tinymixer/nn/masks.py): the rate kept, any split of the batch computing the
same rows, no structure between neighbouring elements, images or masks (with the statistics shown able to see
structure where there is some), the same bits on the device as on the host, in one fused kernel."""

from __future__ import annotations

import numpy as np
import pytest

from tinymixer import backend
from tinymixer.nn.masks import KeepMask, keep_mask, lowbias32


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_a_mask_keeps_one_minus_its_rate(rate):
    mask = KeepMask.draw(np.random.default_rng([5, int(rate * 10)]), (1000, 1000), rate).array()
    assert mask.dtype == bool and mask.shape == (1000, 1000)
    sigma = np.sqrt(rate * (1 - rate) / mask.size)
    assert abs(mask.mean() - (1 - rate)) <= 5 * sigma + 1e-12  # rate 0: every element kept, exactly


def test_any_split_of_the_batch_computes_the_rows_of_the_whole():
    mask = KeepMask.draw(np.random.default_rng(0), (10, 7, 9), 0.3)
    whole = mask.array()
    for bounds in ([0, 10], [0, 3, 10], [0, 1, 2, 9, 10], [0, 5, 5, 10]):
        parts = [mask[a:b].array() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(mask[2:6][1:3].array(), whole[3:5])  # a part of a part
    assert np.array_equal(mask[np.arange(4, 8)].array(), whole[4:8])  # consecutive indices, as a slice
    with pytest.raises(TypeError, match="consecutive images"):
        mask[np.array([0, 2])]
    with pytest.raises(TypeError, match="consecutive images"):
        mask[::2]


def test_masks_are_seeded_and_every_draw_differs():
    a = keep_mask(np.random.default_rng([1, 2, 3]), (64, 100), 0.5)
    assert np.array_equal(a, keep_mask(np.random.default_rng([1, 2, 3]), (64, 100), 0.5))
    rng = np.random.default_rng([1, 2, 3])
    first, second = KeepMask.draw(rng, (64, 100), 0.5), KeepMask.draw(rng, (64, 100), 0.5)
    assert first.keys != second.keys and abs(correlation(first.array(), second.array())) < 0.05


def test_no_structure_between_neighbours_images_or_close_keys():
    # at rate 0.5 each element is a fair coin; n = 2^20 coins: a correlation's standard deviation is 1e-3
    mask = KeepMask((123, 456), 0.5, (256, 64, 64))
    m = mask.array()
    flat = m.reshape(256, -1)
    tol = 5 / np.sqrt(flat.size)
    assert abs(correlation(flat[:, :-1], flat[:, 1:])) < tol  # neighbours within an image
    assert abs(correlation(flat[:-1], flat[1:])) < tol  # the same position in neighbouring images
    assert abs(correlation(m[:, :, :-1], m[:, :, 1:])) < tol  # neighbours along the last axis
    for parity in (flat[:, ::2], flat[:, 1::2], flat[::2], flat[1::2]):  # weak low bits would show here
        assert abs(parity.mean() - 0.5) < 5 * 0.5 / np.sqrt(parity.size)
    # two masks whose first keys are close (their counters overlap, shifted by one): the second key decorrelates
    near = KeepMask((124, 789), 0.5, (256, 64, 64)).array().reshape(256, -1)
    assert abs(correlation(flat.ravel()[1:], near.ravel()[:-1])) < tol


def test_the_statistics_see_structure_where_there_is_some():
    # the same checks have teeth: a position hashed only once without its second key, shifted by one, is the
    # same sequence (correlation 1); an unhashed counter has structure between neighbours
    g = np.arange(1 << 16, dtype=np.uint32)
    once_a = lowbias32(g + np.uint32(123)) >= np.uint32(1 << 31)
    once_b = lowbias32(g + np.uint32(124)) >= np.uint32(1 << 31)
    assert correlation(once_a[1:], once_b[:-1]) > 0.99
    plain = (g * np.uint32(2654435761)) >= np.uint32(1 << 31)  # a multiplicative counter, no mixing
    assert abs(correlation(plain[:-1], plain[1:])) > 0.1


def test_bad_rates_and_shapes_are_refused():
    with pytest.raises(ValueError, match="drop rate"):
        KeepMask.draw(np.random.default_rng(0), (3,), 1.0)
    with pytest.raises(ValueError, match="drop rate"):
        keep_mask(np.random.default_rng(0), (3,), -0.1)
    with pytest.raises(ValueError, match="2\\^32 elements"):
        KeepMask.draw(np.random.default_rng(0), (1 << 16, 1 << 16), 0.1)
    assert KeepMask((1, 2), 0.5, (0, 5)).array().shape == (0, 5)
    with pytest.raises(ValueError, match="cannot apply to an array of 1 axes"):
        KeepMask((1, 2), 0.5, (3, 4)).rule(np, 1)  # a (3, 4) mask on a 1-D array
    nearly_one = KeepMask.draw(np.random.default_rng(0), (4, 5), 1 - 2.0**-40)  # rounds to 2^32 without the clamp
    assert nearly_one.threshold == np.uint32(2**32 - 1) and nearly_one.array().sum() <= 1


cupy, WHY_NOT = backend._load_cupy()
on_device = pytest.mark.skipif(cupy is None, reason=f"needs a GPU: {WHY_NOT}")


@pytest.mark.gpu
@on_device
def test_the_device_computes_the_hosts_bits_in_one_kernel():
    mask = KeepMask.draw(np.random.default_rng(7), (32, 16, 48), 0.25)
    host = mask.array(np)
    counts = getattr(cupy, "standin", None)
    if counts is not None:
        counts.COUNTS.reset()
    device = mask[8:24].array(cupy)
    assert isinstance(device, cupy.ndarray) and device.dtype == bool
    assert np.array_equal(cupy.asnumpy(device), host[8:24])
    if counts is not None:
        measured = counts.COUNTS.snapshot()
        fused = sum(n for (name, _), n in counts.COUNTS.launches.items() if name.startswith("fuse:"))
        assert fused == 1 and measured["to_device"] == 0, dict(counts.COUNTS.launches)
        assert measured["launches"] <= 3  # the fused kernel and (the first time) the counters' two aranges
        counts.COUNTS.reset()
        mask[8:24].array(cupy)
        assert counts.COUNTS.snapshot()["launches"] == 1  # the next step: the fused kernel alone


@pytest.mark.gpu
@on_device
def test_dropout_and_stochastic_depth_compute_a_keepmasks_bits_inside_their_kernel():
    """On the device a KeepMask is never made as an array: dropout and stochastic depth (forward with and without
    the residual sum, backward) compute its bits in the kernel that applies them, with the same numbers as the
    host's mask applied by hand, for a part of the batch (a shard's rows) too."""
    from tinymixer.nn.layers import (
        dropout_backward,
        dropout_forward,
        stochastic_depth_backward,
        stochastic_depth_forward,
    )

    r = np.random.default_rng(3)
    x, residual = r.standard_normal((2, 12, 5, 6)).astype(np.float32)  # (B, S, C) each, B = 12
    drop, depth = KeepMask.draw(r, (24, 5, 6), 0.3)[12:], KeepMask.draw(r, (24,), 0.25)[12:]  # the second half
    dx, dres = cupy.asarray(x), cupy.asarray(residual)
    scale_drop, scale_depth = np.float32(1 / 0.7), np.float32(1 / 0.75)
    counts = getattr(cupy, "standin", None)
    dropout_forward(dx, 0.3, drop)  # the first time: the counters of images and positions are made, and kept
    if counts is not None:
        counts.COUNTS.reset()
    out, cache = dropout_forward(dx, 0.3, drop)
    if counts is not None:  # one kernel: no mask kernel before it, nothing kept but the rule
        assert [n for (n, _), k in counts.COUNTS.launches.items() if k] == ["fuse:hashed_scale_fused"]
    assert cache[0] is drop
    np.testing.assert_array_equal(cupy.asnumpy(out), x * drop.array(np) * scale_drop)
    np.testing.assert_array_equal(cupy.asnumpy(dropout_backward(dres, cache)), residual * drop.array(np) * scale_drop)
    kept = depth.array(np)[:, None, None]
    for with_residual in (False, True):
        out, cache = stochastic_depth_forward(dx, 0.25, depth, residual=dres if with_residual else None)
        expected = x * kept * scale_depth + (residual if with_residual else 0)
        np.testing.assert_array_equal(cupy.asnumpy(out), expected)
        np.testing.assert_array_equal(cupy.asnumpy(stochastic_depth_backward(dres, cache)),
                                      residual * kept * scale_depth)
    given = cupy.asarray(drop.array(np))  # a mask given as an array still works
    np.testing.assert_array_equal(cupy.asnumpy(dropout_forward(dx, 0.3, given)[0]), x * drop.array(np) * scale_drop)


@pytest.mark.gpu
@on_device
def test_a_function_cupy_cannot_fuse_runs_unfused_after_a_warning():
    if not hasattr(cupy, "standin"):
        pytest.skip("the stand-in refuses a routine inside a fused function; real CuPy might compile it")

    @backend.fused
    def doubled_and_joined(xp, x):
        return xp.concatenate([x, x]) * 2  # concatenate is not elementwise

    x = cupy.asarray(np.arange(3.0))
    with pytest.warns(RuntimeWarning, match="runs unfused"):
        assert cupy.asnumpy(doubled_and_joined(x)).tolist() == [0, 2, 4, 0, 2, 4]
    assert cupy.asnumpy(doubled_and_joined(x)).tolist() == [0, 2, 4, 0, 2, 4]  # no second warning needed
