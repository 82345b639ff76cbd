"""Windows of an image, and the two layers made of them: the Mixer's patch stem and the CNN's convolution.

- ``im2col``: every K x K window of the zero-padded images as one row of a table; ``col2im``, its exact adjoint
  (overlapping windows' gradients add up);
- ``patchify`` / ``unpatchify``: im2col's non-overlapping case (kernel P, stride P, padding 0), the Mixer's patches;
- ``stem_forward`` / ``stem_backward``: patches, then one dense layer (the paper's per-patch fully-connected layer);
- ``conv2d_forward`` / ``conv2d_backward``: im2col, then one matrix multiply -- on the CPU in cache-sized blocks of
  images, the windows made again in the backward (``CONV_BLOCK_BYTES``).

Same conventions as ``layers.py`` (``forward -> (out, cache)``, ``backward(dout, cache) -> gradients``); the plain
versions are in ``reference.py`` (``tests/test_reference.py`` holds the two equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import array_module
from ..chunks import BLOCK_ELEMENTS
from ..util.numbers import is_whole
from .layers import constant_vector, dense_backward, dense_forward

Array = Any  # numpy.ndarray or cupy.ndarray



def _checked_window(images_shape: tuple, kernel_size: int, stride: int, padding: int) -> tuple[int, int]:
    """(H_out, W_out) = ((H + 2p - K) // s + 1, (W + 2p - K) // s + 1), after checking the arguments make sense."""
    if len(images_shape) != 4:
        raise ValueError(f"images must be (B, H, W, C_in), got shape {tuple(images_shape)}")
    for name, value, low in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if not is_whole(value, low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    h, w = images_shape[1:3]
    if kernel_size > h + 2 * padding or kernel_size > w + 2 * padding:
        raise ValueError(f"kernel_size {kernel_size} is larger than the padded image {h + 2 * padding} x "
                         f"{w + 2 * padding} (H x W = {h} x {w}, padding {padding})")
    return (h + 2 * padding - kernel_size) // stride + 1, (w + 2 * padding - kernel_size) // stride + 1


def im2col(images: Array, kernel_size: int, stride: int = 1, padding: int = 0) -> Array:
    """Every K x K window of the zero-padded images, flattened in (row, column, channel) order.

    With K = kernel_size, s = stride, p = padding and xpad the images with p zeros on each side of H and W:

        columns[b, y, x, (i K + j) C_in + c] = xpad[b, s y + i, s x + j, c]      0 <= i, j < K

    so that a convolution with a kernel (K, K, C_in, C_out) is ``columns @ kernel.reshape(K*K*C_in, C_out)``:
    one GEMM.  Inputs: images (B, H, W, C_in).  Returns columns (B, H_out, W_out, K*K*C_in) with
    H_out = (H + 2p - K) // s + 1 (likewise W_out).  Rows and columns past the last whole window are dropped.

    Vectorised over batch and pixels: one copy of a strided view of the padded images (``_im2col_by_offsets``).
    The non-overlapping case (s = K, p = 0: ``patchify``) is a reshape and one transpose instead, the same numbers.
    """
    h_out, w_out = _checked_window(images.shape, kernel_size, stride, padding)
    b, _, _, c = images.shape
    k, s = kernel_size, stride
    if s == k and padding == 0:  # windows tile the image: a view and one transposing copy
        tiles = images[:, :h_out * k, :w_out * k, :].reshape(b, h_out, k, w_out, k, c)  # (B, H_out, K, W_out, K, C_in)
        return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(b, h_out, w_out, k * k * c)  # (B, H_out, W_out, K*K*C_in)
    return _im2col_by_offsets(images, k, s, padding, h_out, w_out)


def _im2col_by_offsets(images: Array, k: int, s: int, padding: int, h_out: int, w_out: int) -> Array:
    """The general im2col: one copy of a strided view of the padded images that IS the windows.

        columns[b, y, x, i, (j, c)] = xpad[b, s y + i, s x + j, c]      0 <= i, j < K

    For fixed (b, y, x, i) the K*C_in entries (j, c) are K neighbouring pixels of one row of xpad, which lie next
    to each other in memory: so the windows are a view of xpad with strides (B: xpad's, y: s rows, x: s pixels,
    i: one row, (j, c): one element), read in a single copy whose innermost runs are K*C_in long. (The loop
    over the K*K offsets it replaces, ``columns[..., i, j, :] = xpad[:, i::s, j::s, :]``, copied runs of C_in
    elements, 2.7x slower for C_in = 40.) The view only reads memory inside xpad: s (y_max) + i_max = H + 2p - 1
    at most, likewise along W."""
    xp = array_module(images)
    b, _, _, c = images.shape
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = xp.ascontiguousarray(xp.pad(images, pad) if padding else images)  # (B, H + 2p, W + 2p, C_in)
    sb, sh, sw, sc = padded.strides  # in bytes; sw = C_in * sc, since padded is C-contiguous
    windows = xp.lib.stride_tricks.as_strided(  # (B, H_out, W_out, K, K*C_in), a view: nothing copied yet
        padded, shape=(b, h_out, w_out, k, k * c), strides=(sb, s * sh, s * sw, sh, sc))
    columns = xp.empty((b, h_out, w_out, k, k * c), dtype=images.dtype)  # (B, H_out, W_out, K, K*C_in)
    columns[...] = windows  # the one copy
    return columns.reshape(b, h_out, w_out, k * k * c)  # (B, H_out, W_out, K*K*C_in), no copy


def col2im(columns: Array, image_hw: tuple[int, int], kernel_size: int, stride: int = 1, padding: int = 0) -> Array:
    """The adjoint (transpose) of ``im2col``: every window's entries are ADDED back onto the pixels they came from.

        images[b, h, w, c] = sum over (y, x, i, j) with s y + i - p = h and s x + j - p = w of
                             columns[b, y, x, (i K + j) C_in + c]

    so that <im2col(x), y> = <x, col2im(y)> for all x, y: it is im2col's backward (dL/dx = col2im(dL/dcolumns)).
    A pixel covered by several overlapping windows gets the sum; a padding pixel's share is dropped; a pixel no
    window covers gets 0.  For s = K and p = 0 it is the inverse of im2col, ``unpatchify``.
    Inputs: columns (B, H_out, W_out, K*K*C_in), image_hw = (H, W).  Returns images (B, H, W, C_in).
    """
    xp = array_module(columns)
    b, h_out, w_out, kkc = columns.shape
    h, w = image_hw
    k, s = kernel_size, stride
    c = kkc // (k * k)
    if (h_out, w_out) != _checked_window((b, h, w, c), k, s, padding) or c * k * k != kkc:
        raise ValueError(f"columns {tuple(columns.shape)} are not im2col's of a {h} x {w} image with "
                         f"kernel_size {k}, stride {s}, padding {padding}")
    windows = columns.reshape(b, h_out, w_out, k, k, c)  # (B, H_out, W_out, K, K, C_in)
    if s == k and padding == 0:  # non-overlapping: each pixel is in at most one window, so a transpose
        tiles = windows.transpose(0, 1, 3, 2, 4, 5).reshape(b, h_out * k, w_out * k, c)  # (B, H_out K, W_out K, C_in)
        if (h_out * k, w_out * k) == (h, w):
            return tiles  # the windows tile the whole image (unpatchify): (B, H, W, C_in)
        images = xp.zeros((b, h, w, c), dtype=columns.dtype)  # (B, H, W, C_in); uncovered edge pixels stay 0
        images[:, :h_out * k, :w_out * k, :] = tiles
        return images
    # The general case, in blocks of images. In window (y, x), kernel row i is a run of K*C_in numbers (j, c)
    # that lands on K neighbouring pixels of padded row s y + i, from pixel s x on. Windows q = ceil(K / s) apart
    # in x start q s >= K pixels apart, so their runs never overlap: for each row i and residue r, the windows
    # x = r, r + q, r + 2q, ... add onto disjoint runs, one strided view of the padded block -- one `+=` with
    # runs K*C_in long (K*K adds of C_in-long runs, one per offset (i, j), were 2x slower for C_in = 40). A block
    # of images keeps its columns (~2 MB) in the CPU cache through the K*q adds that read them.
    q = -(-k // s)  # ceil(K / s)
    per_block = b if not isinstance(columns, np.ndarray) else max(1, 4 * BLOCK_ELEMENTS // (h_out * w_out * kkc))
    rows_of_windows = columns.reshape(b, h_out, w_out, k, k * c)  # (B, H_out, W_out, K, K*C_in)
    images = xp.empty((b, h, w, c), dtype=columns.dtype)  # (B, H, W, C_in)
    padded = xp.empty((min(per_block, b), h + 2 * padding, w + 2 * padding, c), dtype=columns.dtype)  # a block's
    sb, sh, sw, sc = padded.strides  # in bytes; sw = C_in * sc
    for start in range(0, b, per_block):
        n = min(per_block, b - start)
        block = padded[:n]  # (n, H + 2p, W + 2p, C_in)
        block.fill(0)
        for i in range(k):
            for r in range(min(q, w_out)):
                m = len(range(r, w_out, q))  # windows x = r + q t, t < m
                runs = xp.lib.stride_tricks.as_strided(  # runs[b, y, t, (j, c)] = block[b, s y + i, s (r + q t) + j, c]
                    block[:, i:, s * r:], shape=(n, h_out, m, k * c), strides=(sb, s * sh, q * s * sw, sc))
                runs += rows_of_windows[start:start + n, :, r::q, i, :]  # (n, H_out, m, K*C_in)
        images[start:start + n] = block[:, padding:padding + h, padding:padding + w, :]  # padding's shares dropped
    return images  # (B, H, W, C_in)


def patchify(images: Array, patch_size: int) -> Array:
    """Cut images into non-overlapping P x P patches, each flattened in (row, column, channel) order.

    Inputs: images (B, H, W, C_in) with H and W multiples of P.  Returns patches (B, S, P*P*C_in) with
    S = (H/P)(W/P) tokens in row-major order over the patch grid: the order the official model flattens its
    stem output in, and the order its kernel (P, P, C_in, C) reshapes to (P*P*C_in, C).
    This is ``im2col`` with kernel P, stride P, padding 0, its (H/P, W/P) grid flattened to S tokens.
    """
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patchify needs H and W multiples of the patch size {p}, got H x W = {h} x {w}")
    return im2col(images, p, p, 0).reshape(b, (h // p) * (w // p), p * p * c)  # (B, S, P*P*C_in), a copy


def unpatchify(patches: Array, patch_size: int, image_hw: tuple[int, int]) -> Array:
    """The inverse of ``patchify``: (B, S, P*P*C_in) -> (B, H, W, C_in). Carries gradients back to pixels.

    It is ``col2im`` with kernel P, stride P, padding 0 (no window overlaps, so nothing is summed)."""
    b = patches.shape[0]
    h, w = image_hw
    p = patch_size
    return col2im(patches.reshape(b, h // p, w // p, -1), image_hw, p, p, 0)  # (B, H, W, C_in)


def stem_forward(images: Array, kernel: Array, bias: Array) -> tuple[Array, tuple]:
    """Patch embedding: every P x P patch goes through one shared linear map to C channels.

    ``out[b, s] = patch[b, s] . kernel + bias`` — the paper's "per-patch fully-connected layer", identical to
    a convolution with a P x P kernel and stride P (``conv2d_forward(images, kernel, bias, stride=P)``, its grid
    flattened).  Inputs: images (B, H, W, C_in), kernel (P, P, C_in, C), bias (C,).  Returns out (B, S, C) and
    the cache.
    """
    p = kernel.shape[0]
    patches = patchify(images, p)  # (B, S, P*P*C_in)
    out, dense_cache = dense_forward(patches, kernel.reshape(-1, kernel.shape[-1]), bias)  # (B, S, C)
    return out, (dense_cache, kernel.shape, images.shape[1:3])


def stem_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Returns dimages (B, H, W, C_in), dkernel (P, P, C_in, C), dbias (C,)."""
    dense_cache, kernel_shape, image_hw = cache
    dpatches, dkernel, dbias = dense_backward(dout, dense_cache)
    dimages = unpatchify(dpatches, kernel_shape[0], image_hw)
    return dimages, dkernel.reshape(kernel_shape), dbias


def conv2d_forward(images: Array, kernel: Array, bias: Array | None, stride: int = 1, padding: int = 0
                   ) -> tuple[Array, tuple]:
    """2-D convolution (cross-correlation, as every deep-learning library means it), zero padding:

        out[b, y, x, o] = bias[o] + sum_{i, j, c} xpad[b, s y + i, s x + j, c] kernel[i, j, c, o]

    computed as im2col and one GEMM: ``out = im2col(images) @ kernel.reshape(K*K*C_in, C_out) + bias``.
    Inputs: images (B, H, W, C_in), kernel (K, K, C_in, C_out) (the layout of Flax's ``nn.Conv`` and of the
    Mixer's stem), bias (C_out,) or None (no bias: a convolution followed by a normalisation needs none; the
    backward's dbias is then unused).  Returns out (B, H_out, W_out, C_out) with H_out = (H + 2p - K) // s + 1,
    and the cache for ``conv2d_backward``.

    Trick (on the CPU): the windows of a whole batch are K*K times its pixels -- 75 MB for 128 images of 32x32x16
    with a 3x3 kernel -- and a GEMM that reads them from memory is bound by that memory, not by arithmetic. So
    the images go in blocks whose windows are about ``CONV_BLOCK_BYTES``: each block's windows are made and
    multiplied while they are still in the CPU's cache, and the cache keeps the images (K*K times smaller than
    the windows), whose windows the backward makes again, block by block. The same numbers as one GEMM, to
    rounding. (On a GPU one GEMM over the whole batch is better: one kernel, memory fast.) As with
    ``dense_forward``, the cache holds the input itself: change it in place before the backward and the gradients
    are those of the changed input.
    """
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or 0 in kernel.shape:
        raise ValueError(f"kernel must be (K, K, C_in, C_out), each at least 1, got shape {tuple(kernel.shape)}")
    k, _, c_in, c_out = kernel.shape
    if images.ndim != 4 or images.shape[-1] != c_in:
        raise ValueError(f"images must be (B, H, W, C_in={c_in}) for a kernel {tuple(kernel.shape)}, "
                         f"got shape {tuple(images.shape)}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"bias must be (C_out,) = ({c_out},) or None, got shape {tuple(bias.shape)}")
    if isinstance(images, np.ndarray):
        return _conv2d_forward_in_blocks(images, kernel, bias, stride, padding)
    columns = im2col(images, k, stride, padding)  # 1. (B, H_out, W_out, K*K*C_in)
    out, dense_cache = dense_forward(columns, kernel.reshape(k * k * c_in, c_out), bias)  # 2. (B, H_out, W_out, C_out)
    return out, (dense_cache, kernel.shape, images.shape[1:3], stride, padding)


def conv2d_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of ``conv2d_forward``: the GEMM's backward, then im2col's adjoint.

        dcolumns = dout @ kernel^T,   dkernel = columns^T @ dout,   dbias = sum over (b, y, x) of dout,
        dimages = col2im(dcolumns)    (overlapping windows add up)

    Inputs: dout (B, H_out, W_out, C_out).  Returns dimages (B, H, W, C_in), dkernel (K, K, C_in, C_out),
    dbias (C_out,). (On the CPU block by block, the windows made again from the cached images: see the forward.)
    """
    if cache[0] == "blocks":
        return _conv2d_backward_in_blocks(dout, cache)
    dense_cache, kernel_shape, image_hw, stride, padding = cache
    dcolumns, dkernel, dbias = dense_backward(dout, dense_cache)  # undoes 2.: (B, H_out, W_out, K*K*C_in)
    dimages = col2im(dcolumns, image_hw, kernel_shape[0], stride, padding)  # undoes 1.: (B, H, W, C_in)
    return dimages, dkernel.reshape(kernel_shape), dbias


# Output positions per block of images in the CPU convolution. Measured (1 thread, batch 128, 3x3 convolutions of
# cnn-micro's and cnn-tiny's stages, forward): 4096, 8192 and 16384 against the whole batch at once -- 32x32x16:
# 15.7, 14.4, 13.7 vs 25.5 ms; 16x16x32: 8.6, 8.1, 10.2 vs 12.3; 32x32x40: 47.1, 44.6, 52.7 vs 82.4; 16x16x80:
# 31.7, 37.2, 45.8 vs 45.8; 8x8x64 and 8x8x160 alike within 10%.
#
# Remeasured as the forward and backward of one convolution (1 thread, batch 128), blocks of 1024 to 8192 output
# positions: the best blocks hold 2-6 MB of windows whatever the width (32x32x16: 52-57 ms, flat; 16x16x32: 31.0 at
# 2.2-4.5 MB against 40.5 at 9 MB; 8x8x64: 19.7 at 4.5 MB against 27.0 at 18 MB; 32x32x40: 154.6 at 5.6 MB against
# 181.3 at 11.2; 16x16x80: 111.7 at 5.6 MB against 161.1 at 22.5; 8x8x160: 96.2 at 5.6 MB against 113.6 at 45):
# so a block is sized by the bytes of its windows, not by its positions.
CONV_BLOCK_BYTES = 5 * 2**20


def _conv_blocks(batch: int, image_bytes: int) -> list[slice]:
    """Consecutive images, about CONV_BLOCK_BYTES of windows a block (at least one image); ``image_bytes``: the
    bytes of one image's windows (positions x K*K*C x itemsize)."""
    per = max(1, CONV_BLOCK_BYTES // max(1, image_bytes))
    return [slice(start, min(start + per, batch)) for start in range(0, batch, per)]


def _conv2d_forward_in_blocks(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int,
                              padding: int) -> tuple[np.ndarray, tuple]:
    k, _, c_in, c_out = kernel.shape
    h_out, w_out = _checked_window(images.shape, k, stride, padding)
    kernel2 = kernel.reshape(k * k * c_in, c_out)  # (K*K*C_in, C_out)
    out = np.empty((images.shape[0], h_out, w_out, c_out), dtype=np.result_type(images, kernel))
    for block in _conv_blocks(images.shape[0], h_out * w_out * k * k * c_in * out.itemsize):
        columns = im2col(images[block], k, stride, padding)  # 1. (n, H_out, W_out, K*K*C_in), in the cache
        np.matmul(columns.reshape(-1, k * k * c_in), kernel2, out=out[block].reshape(-1, c_out))  # 2.
    if bias is not None:
        out += bias
    return out, ("blocks", images, kernel, stride, padding)


def _conv2d_backward_in_blocks(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, images, kernel, stride, padding = cache
    k, _, c_in, c_out = kernel.shape
    kernel2 = kernel.reshape(k * k * c_in, c_out)  # (K*K*C_in, C_out)
    dkernel = np.zeros_like(kernel2)
    dimages = np.empty(images.shape, dtype=dout.dtype)  # (B, H, W, C_in)
    # With stride 1, dimages is itself a convolution: of dout, zero-padded by K-1-p, with the kernel flipped in
    # both spatial axes and its channel axes swapped (each input pixel gathers the outputs whose windows cover it).
    # Making dout's windows (a copy) is about twice as fast as adding the windows' gradients back (col2im).
    as_convolution = stride == 1 and padding <= k - 1
    if as_convolution:  # (K*K*C_out, C_in): the kernel flipped in both spatial axes, its channel axes swapped
        flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(k * k * c_out, c_in)
    columns_bytes = dout.shape[1] * dout.shape[2] * k * k * c_in  # an image's windows of the input (for dkernel)
    dout_bytes = images.shape[1] * images.shape[2] * k * k * c_out if as_convolution else 0  # of dout (for dimages)
    for block in _conv_blocks(images.shape[0], max(columns_bytes, dout_bytes) * dimages.itemsize):
        columns = im2col(images[block], k, stride, padding)  # 1. again: (n, H_out, W_out, K*K*C_in)
        dout2 = dout[block].reshape(-1, c_out)  # (n H_out W_out, C_out)
        dkernel += columns.reshape(-1, k * k * c_in).T @ dout2  # undoes 2.: the blocks' sum, in block order
        if as_convolution:  # undoes 2. and 1. at once: (n, H, W, C_in)
            windows = im2col(dout[block], k, 1, k - 1 - padding)  # (n, H, W, K*K*C_out)
            np.matmul(windows.reshape(-1, k * k * c_out), flipped, out=dimages[block].reshape(-1, c_in))
        else:
            dcolumns = (dout2 @ kernel2.T).reshape(columns.shape)  # undoes 2.
            dimages[block] = col2im(dcolumns, images.shape[1:3], k, stride, padding)  # undoes 1.
    ones = constant_vector(np, dout.shape[0] * dout.shape[1] * dout.shape[2], 1.0, dout.dtype)
    dbias = ones @ dout.reshape(-1, c_out)  # (C_out,)
    return dimages, dkernel.reshape(kernel.shape), dbias
