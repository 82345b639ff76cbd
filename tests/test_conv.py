"""Convolution as im2col + one GEMM: im2col against its definition and against ``patchify`` (its stride-P case),
col2im as im2col's exact adjoint, conv2d's backward against finite differences (float64), and forward and
gradients against PyTorch's conv2d and autograd (float64).

PyTorch is a test-only dependency: without it the cross-check is skipped, except under CI (``CI`` set), where a
missing PyTorch is a failure.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest
from helpers import assert_gradients_ok

from tinymixer.nn.conv import (
    _im2col_by_offsets,
    col2im,
    conv2d_backward,
    conv2d_forward,
    im2col,
    patchify,
    stem_forward,
    unpatchify,
)
from tinymixer.nn.gradcheck import check_gradients

# (kernel_size, stride, padding): overlapping, strided, non-overlapping, 1x1, and padded non-overlapping windows
COMBOS = [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0), (3, 2, 0), (2, 2, 1), (4, 3, 2), (5, 1, 0)]


def conv2d_by_definition(images, kernel, bias, stride, padding):
    """out[b, y, x, o] = bias[o] + sum_{i, j, c} xpad[b, s y + i, s x + j, c] kernel[i, j, c, o], window by window."""
    k = kernel.shape[0]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h_out = (padded.shape[1] - k) // stride + 1
    w_out = (padded.shape[2] - k) // stride + 1
    out = np.empty((images.shape[0], h_out, w_out, kernel.shape[-1]))
    for y in range(h_out):
        for x in range(w_out):
            window = padded[:, y * stride:y * stride + k, x * stride:x * stride + k, :]  # (B, K, K, C_in)
            out[:, y, x, :] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out


# -- im2col / col2im ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,p", COMBOS)
def test_im2col_matches_its_definition(rng, k, s, p):
    images = rng.standard_normal((2, 7, 6, 3))
    columns = im2col(images, k, s, p)
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    h_out, w_out = (7 + 2 * p - k) // s + 1, (6 + 2 * p - k) // s + 1
    assert columns.shape == (2, h_out, w_out, k * k * 3)
    for y in range(h_out):
        for x in range(w_out):
            window = padded[:, y * s:y * s + k, x * s:x * s + k, :]  # (B, K, K, C_in), flattened (row, col, channel)
            np.testing.assert_array_equal(columns[:, y, x], window.reshape(2, -1))


@pytest.mark.parametrize("shape,k", [((2, 8, 12, 3), 4), ((1, 9, 7, 2), 4), ((2, 4, 4, 1), 2)])
def test_non_overlapping_fast_path_equals_the_offset_loop(rng, shape, k):
    # stride == kernel, padding 0 takes a reshape/transpose path (the stem's); the general loop must agree,
    # also when the image is not a multiple of K (9 x 7 with K = 4: a 2 x 1 grid, the last row and 3 columns dropped)
    images = rng.standard_normal(shape)
    h_out, w_out = shape[1] // k, shape[2] // k
    np.testing.assert_array_equal(im2col(images, k, k, 0), _im2col_by_offsets(images, k, k, 0, h_out, w_out))


def test_patchify_is_im2col_with_stride_p(rng):
    images = rng.standard_normal((2, 8, 12, 3))
    columns = im2col(images, 4, 4, 0)  # (2, 2, 3, 48)
    np.testing.assert_array_equal(patchify(images, 4), columns.reshape(2, 6, 48))
    np.testing.assert_array_equal(unpatchify(patchify(images, 4), 4, (8, 12)), images)
    np.testing.assert_array_equal(col2im(columns, (8, 12), 4, 4, 0), unpatchify(columns.reshape(2, 6, 48), 4, (8, 12)))


def test_stem_is_conv2d_with_stride_p_flattened(rng):
    images, kernel, bias = rng.standard_normal((2, 12, 8, 3)), rng.standard_normal((4, 4, 3, 5)), rng.standard_normal(5)
    stem_out, _ = stem_forward(images, kernel, bias)  # (B, S, C)
    conv_out, _ = conv2d_forward(images, kernel, bias, stride=4)  # (B, H/P, W/P, C)
    np.testing.assert_allclose(stem_out, conv_out.reshape(2, 6, 5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", COMBOS + [(3, 3, 0)])
@pytest.mark.parametrize("hw", [(7, 6), (9, 9)])
def test_col2im_is_the_adjoint_of_im2col(rng, k, s, p, hw):
    # <im2col(x), y> == <x, col2im(y)> for random x, y: col2im is exactly im2col's transpose (its backward)
    x = rng.standard_normal((2, *hw, 3))
    cols = im2col(x, k, s, p)
    y = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, y)
    rhs = np.vdot(x, col2im(y, hw, k, s, p))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (lhs, rhs)


def test_col2im_adds_overlapping_windows():
    # K=3, s=1, p=1 on a 3x3 image of ones: im2col then col2im counts how many windows cover each pixel
    ones = np.ones((1, 3, 3, 1))
    counts = col2im(im2col(ones, 3, 1, 1), (3, 3), 3, 1, 1)[0, :, :, 0]
    np.testing.assert_array_equal(counts, [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


# -- conv2d -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,p", COMBOS)
def test_conv2d_forward_matches_definition(rng, k, s, p):
    images, kernel, bias = rng.standard_normal((2, 7, 6, 3)), rng.standard_normal((k, k, 3, 4)), rng.standard_normal(4)
    out, _ = conv2d_forward(images, kernel, bias, stride=s, padding=p)
    np.testing.assert_allclose(out, conv2d_by_definition(images, kernel, bias, s, p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0), (4, 3, 2)])
def test_conv2d_gradients(rng, k, s, p):
    inputs = dict(images=rng.standard_normal((2, 6, 5, 3)), kernel=rng.standard_normal((k, k, 3, 2)),
                  bias=rng.standard_normal(2))
    errors = check_gradients(partial(conv2d_forward, stride=s, padding=p), conv2d_backward, inputs)
    assert set(errors) == {"images", "kernel", "bias"}
    assert_gradients_ok(errors)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 1, 0), (3, 1, 3), (3, 2, 1), (1, 2, 0)])
def test_conv2d_gradients_in_several_blocks(rng, k, s, p, monkeypatch):
    """The finite-difference check with the batch cut into several blocks (the backward's windows made again
    block by block; with stride 1 and p <= K-1 dimages as a convolution with the flipped kernel)."""
    from tinymixer.nn import conv

    h_out, w_out = conv._checked_window((3, 6, 5, 2), k, s, p)
    monkeypatch.setattr(conv, "CONV_BLOCK_BYTES", h_out * w_out * k * k * 2 * 8)  # one image's float64 windows
    inputs = dict(images=rng.standard_normal((3, 6, 5, 2)), kernel=rng.standard_normal((k, k, 2, 3)),
                  bias=rng.standard_normal(3))
    assert len(conv._conv_blocks(3, h_out * w_out * k * k * 2 * 8)) == 3
    assert_gradients_ok(check_gradients(partial(conv2d_forward, stride=s, padding=p), conv2d_backward, inputs))


def test_conv2d_gradient_check_has_teeth(rng):
    # a wrong dimages (halved) must fail the check, while the untouched dkernel still passes
    def halving_backward(dout, cache):
        dimages, dkernel, dbias = conv2d_backward(dout, cache)
        return dimages * 0.5, dkernel, dbias

    inputs = dict(images=rng.standard_normal((1, 5, 5, 2)), kernel=rng.standard_normal((3, 3, 2, 2)),
                  bias=rng.standard_normal(2))
    errors = check_gradients(partial(conv2d_forward, stride=1, padding=1), halving_backward, inputs)
    assert errors["images"] > 1e-3 and errors["kernel"] < 1e-7


@pytest.mark.parametrize("images_shape,kernel_shape,bias_shape,kwargs,match", [
    ((1, 4, 4, 3), (6, 6, 3, 2), (2,), dict(padding=0), "larger than the padded image"),
    ((1, 4, 8, 3), (7, 7, 3, 2), (2,), dict(padding=1), "larger than the padded image"),
    ((1, 6, 6, 3), (3, 3, 2, 4), (4,), dict(), "C_in=2"),
    ((1, 6, 6, 3), (3, 2, 3, 4), (4,), dict(), r"\(K, K, C_in, C_out\)"),
    ((1, 6, 6, 0), (3, 3, 0, 4), (4,), dict(), "each at least 1"),  # no channels: said, not a ZeroDivisionError
    ((6, 6, 3), (3, 3, 3, 4), (4,), dict(), "C_in=3"),
    ((1, 6, 6, 3), (3, 3, 3, 4), (3,), dict(), "bias"),
    ((1, 6, 6, 3), (3, 3, 3, 4), (4,), dict(stride=0), "stride"),
    ((1, 6, 6, 3), (3, 3, 3, 4), (4,), dict(padding=-1), "padding"),
])
def test_conv2d_rejects_bad_input(images_shape, kernel_shape, bias_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv2d_forward(np.zeros(images_shape), np.zeros(kernel_shape), np.zeros(bias_shape), **kwargs)


def test_im2col_and_col2im_reject_bad_input():
    with pytest.raises(ValueError, match="larger than the padded image"):
        im2col(np.zeros((1, 3, 3, 1)), 4, 1, 0)
    with pytest.raises(ValueError, match="kernel_size"):
        im2col(np.zeros((1, 3, 3, 1)), 0, 1, 0)
    with pytest.raises(ValueError, match="not im2col's"):
        col2im(np.zeros((1, 2, 2, 9)), (5, 5), 3, 1, 0)  # a 5x5 image gives a 3x3 grid, not 2x2
    with pytest.raises(ValueError, match="multiples of the patch size"):
        patchify(np.zeros((1, 6, 8, 3)), 4)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 1, 0), (3, 1, 2), (1, 1, 0), (3, 2, 1), (1, 2, 0), (3, 1, 3)])
def test_conv2d_in_blocks_equals_one_gemm_over_the_batch(rng, k, s, p, monkeypatch):
    """The CPU convolution runs in blocks of images (a few output positions each here, so that a batch of 5 is
    several uneven blocks), its backward making the windows again and, with stride 1, dimages as a convolution
    with the flipped kernel (padding K-1-p; col2im where p > K-1): the same numbers as the GPU path's one GEMM over
    the whole batch and col2im, forward and backward."""
    from tinymixer.nn import conv

    h_out, w_out = conv._checked_window((5, 7, 6, 3), k, s, p)
    monkeypatch.setattr(conv, "CONV_BLOCK_BYTES", 2 * h_out * w_out * k * k * 4 * 8)  # 2 images' widest windows
    images, kernel, bias = rng.standard_normal((5, 7, 6, 3)), rng.standard_normal((k, k, 3, 4)), rng.standard_normal(4)
    out, cache = conv2d_forward(images, kernel, bias, stride=s, padding=p)
    assert cache[0] == "blocks" and len(conv._conv_blocks(5, h_out * w_out * k * k * 3 * 8)) == 3  # 2, 2, 1 images
    columns = im2col(images, k, s, p)  # the one-GEMM path, written out
    whole = columns @ kernel.reshape(-1, 4) + bias
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dimages, dkernel, dbias = conv2d_backward(dout, cache)
    np.testing.assert_allclose(dkernel.reshape(-1, 4), columns.reshape(-1, columns.shape[-1]).T @ dout.reshape(-1, 4),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(dimages, col2im(dout @ kernel.reshape(-1, 4).T, (7, 6), k, s, p), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dbias, dout.sum(axis=(0, 1, 2)), rtol=0, atol=1e-12)


# -- PyTorch float64 cross-check ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,p", COMBOS)
def test_conv2d_matches_pytorch(rng, k, s, p):
    if os.environ.get("CI"):
        import torch  # noqa: F401 - under CI a missing torch must fail, not skip
    torch = pytest.importorskip("torch")
    images, kernel, bias = rng.standard_normal((2, 9, 7, 3)), rng.standard_normal((k, k, 3, 5)), rng.standard_normal(5)
    out, cache = conv2d_forward(images, kernel, bias, stride=s, padding=p)
    dout = rng.standard_normal(out.shape)
    dimages, dkernel, dbias = conv2d_backward(dout, cache)

    t_images = torch.tensor(images.transpose(0, 3, 1, 2), requires_grad=True)  # NHWC -> NCHW
    t_kernel = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)  # (K, K, C_in, C_out) -> OIHW
    t_bias = torch.tensor(bias, requires_grad=True)
    t_out = torch.nn.functional.conv2d(t_images, t_kernel, t_bias, stride=s, padding=p)  # (B, C_out, H_out, W_out)
    t_out.backward(torch.tensor(dout.transpose(0, 3, 1, 2)))

    pairs = {"out": (out, t_out.detach().numpy().transpose(0, 2, 3, 1)),
             "dimages": (dimages, t_images.grad.numpy().transpose(0, 2, 3, 1)),
             "dkernel": (dkernel, t_kernel.grad.numpy().transpose(2, 3, 1, 0)),
             "dbias": (dbias, t_bias.grad.numpy())}
    print({name: f"{np.abs(a - b).max():.1e}" for name, (a, b) in pairs.items()})
    for name, (ours, theirs) in pairs.items():
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, err_msg=name)
