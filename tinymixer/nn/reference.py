"""The plain reference: every layer of both networks as a forward/backward pair, written to be read.

This is the textbook version of ``layers.py``, ``blocks.py``, ``mixer.py`` and ``cnn.py`` (as CS231n keeps a
naive ``layers.py`` beside its ``fast_layers.py``, and llm.c a clean reference beside its fast kernels): the same
functions, with no speed tricks -- no ``out=`` buffers, nothing computed in place, no threads, no row blocks, no
BLAS sums, no fused biases. The library runs the fast code; ``tests/test_reference.py`` holds the two equal in
float64 (outputs and every gradient, layer by layer and for both whole models), and finite differences check the
reference itself.

Convention: ``forward(inputs) -> (out, cache)`` and ``backward(dout, cache) -> gradients``, where ``dout`` is
dL/d(out) for a scalar loss L. The forward numbers its steps; the backward undoes them in reverse order, one
line per step, with the shape of what it computes. NumPy arrays, any float dtype (float64 for gradient checks).
Training-time regularisers (dropout, stochastic depth) are not here: they multiply by a mask, and live with the
fast path (``layers.dropout_forward``).

Names: B images, S tokens (patches), C channels, D hidden units, K classes, P patch size.
"""

from __future__ import annotations

import math

import numpy as np

from .blocks import prefixed, subtree  # dictionary helpers: 'MixerBlock_0/LayerNorm_0/scale' <-> 'LayerNorm_0/scale'
from .special import erf

Array = np.ndarray
Params = dict[str, Array]

# ================================================================================================================
# Dense (affine) map of the last axis:  out = x W + b


def dense_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple]:
    """x (..., D_in), w (D_in, D_out), b (D_out,) -> out (..., D_out)."""
    out = x @ w + b  # 1. (..., D_out): every row of x times w, plus b
    return out, (x, w)


def dense_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """dx = dout W^T, dW = x^T dout (summed over all rows), db = sum of dout over all rows."""
    x, w = cache
    d_in, d_out = w.shape
    dx = dout @ w.T  # undoes 1.: (..., D_in)
    dw = x.reshape(-1, d_in).T @ dout.reshape(-1, d_out)  # (D_in, D_out): each row's outer product, summed
    db = dout.reshape(-1, d_out).sum(axis=0)  # (D_out,): b was added to every row
    return dx, dw, db


# ================================================================================================================
# GELU(x) = x Phi(x), elementwise; Phi the standard normal CDF, exactly (erf) or by a tanh curve (the official)

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715


def gelu_tanh_forward(x: Array) -> tuple[Array, tuple]:
    """gelu(x) = x (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3).  x (...) -> out (...)."""
    u = SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)  # 1. (NumPy's x**3 is a general power: ~30x slower)
    t = np.tanh(u)  # 2.
    out = 0.5 * x * (1.0 + t)  # 3.
    return out, (x, t)


def gelu_tanh_backward(dout: Array, cache: tuple) -> Array:
    """gelu'(x) = (1 + t) / 2 + x/2 (1 - t^2) u'(x),  u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2)  (product rule)."""
    x, t = cache
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * x**2)  # undoes 1.
    dt_du = 1.0 - t**2  # undoes 2.: tanh' = 1 - tanh^2
    dgelu = 0.5 * (1.0 + t) + 0.5 * x * dt_du * du_dx  # undoes 3.: d(x g)/dx = g + x g'
    return dout * dgelu


def gelu_erf_forward(x: Array) -> tuple[Array, tuple]:
    """gelu(x) = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2.  x (...) -> out (...)."""
    phi_cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))  # 1. Phi(x)
    out = x * phi_cdf  # 2.
    return out, (x, phi_cdf)


def gelu_erf_backward(dout: Array, cache: tuple) -> Array:
    """gelu'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)  (the normal density, Phi' = phi)."""
    x, phi_cdf = cache
    phi_pdf = np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)  # undoes 1.
    return dout * (phi_cdf + x * phi_pdf)  # undoes 2.


GELU = {"tanh": (gelu_tanh_forward, gelu_tanh_backward), "erf": (gelu_erf_forward, gelu_erf_backward)}


# ================================================================================================================
# LayerNorm over the last (channel) axis, then a per-channel scale and bias

LAYER_NORM_EPS = 1e-6


def layer_norm_forward(x: Array, scale: Array, bias: Array, eps: float = LAYER_NORM_EPS) -> tuple[Array, tuple]:
    """out = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias, statistics over the last axis.
    x (..., C), scale (C,), bias (C,) -> out (..., C)."""
    mu = x.mean(axis=-1, keepdims=True)  # 1. (..., 1)  the mean
    xc = x - mu  # 2. (..., C)  centred
    var = (xc**2).mean(axis=-1, keepdims=True)  # 3. (..., 1)  the (biased) variance
    r = 1.0 / np.sqrt(var + eps)  # 4. (..., 1)  the reciprocal standard deviation
    xhat = xc * r  # 5. (..., C)  normalised
    out = xhat * scale + bias  # 6. (..., C)
    return out, (xc, r, xhat, scale)


def layer_norm_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Each step undone in turn; x reaches the loss through xc directly, through var (3.) and through mu (1.).
    Summed, the three paths give dx = r (d - mean(d) - xhat mean(d xhat)) with d = dout * scale."""
    xc, r, xhat, scale = cache
    c = xc.shape[-1]
    lead = tuple(range(xc.ndim - 1))  # every axis but the channels: scale and bias act on all of them
    dscale = (dout * xhat).sum(axis=lead)  # undoes 6.: (C,)
    dbias = dout.sum(axis=lead)  # (C,)
    dxhat = dout * scale  # (..., C)
    dxc = dxhat * r  # undoes 5. (the path through xc itself): (..., C)
    dr = (dxhat * xc).sum(axis=-1, keepdims=True)  # (..., 1)
    dvar = dr * -0.5 * r**3  # undoes 4.: d(var + eps)^(-1/2) / dvar = -r^3 / 2, (..., 1)
    dxc = dxc + dvar * 2.0 * xc / c  # undoes 3.: dvar/dxc = 2 xc / C, (..., C)
    dmu = -dxc.sum(axis=-1, keepdims=True)  # undoes 2.: xc = x - mu, (..., 1)
    dx = dxc + dmu / c  # undoes 1.: dmu/dx = 1/C, (..., C)
    return dx, dscale, dbias


# ================================================================================================================
# The MLP (one hidden layer) along the last axis, and the Mixer's two uses of it


def mlp_forward(x: Array, params: Params, gelu: str = "tanh") -> tuple[Array, tuple]:
    """out = W2 GELU(W1 x + b1) + b2 on the last axis (as a row vector: x W1 ...).  x (..., D) -> out (..., D).
    params: ``Dense_0/kernel`` (D, D_hidden), ``Dense_0/bias`` (D_hidden,), ``Dense_1/kernel`` (D_hidden, D),
    ``Dense_1/bias`` (D,)."""
    gelu_forward, _ = GELU[gelu]
    h, dense0 = dense_forward(x, params["Dense_0/kernel"], params["Dense_0/bias"])  # 1. (..., D_hidden)
    a, act = gelu_forward(h)  # 2. (..., D_hidden)
    out, dense1 = dense_forward(a, params["Dense_1/kernel"], params["Dense_1/bias"])  # 3. (..., D)
    return out, (dense0, act, dense1, gelu)


def mlp_backward(dout: Array, cache: tuple) -> tuple[Array, Params]:
    """Returns dx (..., D) and the gradients of the four parameters (their names)."""
    dense0, act, dense1, gelu = cache
    _, gelu_backward = GELU[gelu]
    da, dw2, db2 = dense_backward(dout, dense1)  # undoes 3.: (..., D_hidden)
    dh = gelu_backward(da, act)  # undoes 2.: (..., D_hidden)
    dx, dw1, db1 = dense_backward(dh, dense0)  # undoes 1.: (..., D)
    return dx, {"Dense_0/kernel": dw1, "Dense_0/bias": db1, "Dense_1/kernel": dw2, "Dense_1/bias": db2}


def token_mixing_forward(x: Array, params: Params, gelu: str = "tanh") -> tuple[Array, tuple]:
    """The MLP across tokens, one column (channel) at a time, the same weights for every channel:
    out[b, :, c] = W2 GELU(W1 x[b, :, c] + b1) + b2.  x (B, S, C) -> out (B, S, C); W1 (S, D_S), W2 (D_S, S)."""
    xt = x.transpose(0, 2, 1)  # 1. (B, C, S): tokens on the last axis
    yt, mlp = mlp_forward(xt, params, gelu)  # 2. (B, C, S)
    out = yt.transpose(0, 2, 1)  # 3. (B, S, C)
    return out, mlp


def token_mixing_backward(dout: Array, cache: tuple) -> tuple[Array, Params]:
    dyt = dout.transpose(0, 2, 1)  # undoes 3.: (B, C, S)
    dxt, grads = mlp_backward(dyt, cache)  # undoes 2.: (B, C, S)
    return dxt.transpose(0, 2, 1), grads  # undoes 1.: (B, S, C)


def channel_mixing_forward(x: Array, params: Params, gelu: str = "tanh") -> tuple[Array, tuple]:
    """The MLP across channels, one row (token) at a time, the same weights for every token:
    out[b, s, :] = W4 GELU(W3 x[b, s, :] + b3) + b4.  x (B, S, C) -> out (B, S, C); W3 (C, D_C), W4 (D_C, C)."""
    return mlp_forward(x, params, gelu)  # the channels are already the last axis


def channel_mixing_backward(dout: Array, cache: tuple) -> tuple[Array, Params]:
    return mlp_backward(dout, cache)


# ================================================================================================================
# The Mixer block (paper eq. 1): two pre-LayerNorm residual branches


def mixer_block_forward(x: Array, params: Params, gelu: str = "tanh") -> tuple[Array, tuple]:
    """U = X + TokenMixing(LayerNorm_0(X)),  Y = U + ChannelMixing(LayerNorm_1(U)).  x (B, S, C) -> y (B, S, C).
    params named as in a ``MixerBlock_i`` of the official checkpoints."""
    p = params
    z, ln0 = layer_norm_forward(x, p["LayerNorm_0/scale"], p["LayerNorm_0/bias"])  # 1. (B, S, C)
    z, token = token_mixing_forward(z, subtree(p, "token_mixing"), gelu)  # 2. (B, S, C)
    u = x + z  # 3. (B, S, C)  the first residual
    z, ln1 = layer_norm_forward(u, p["LayerNorm_1/scale"], p["LayerNorm_1/bias"])  # 4. (B, S, C)
    z, channel = channel_mixing_forward(z, subtree(p, "channel_mixing"), gelu)  # 5. (B, S, C)
    y = u + z  # 6. (B, S, C)  the second residual
    return y, (ln0, token, ln1, channel)


def mixer_block_backward(dout: Array, cache: tuple) -> tuple[Array, Params]:
    """A residual sum passes its gradient to both terms: to the branch, and straight on to its input."""
    ln0, token, ln1, channel = cache
    dz, channel_grads = channel_mixing_backward(dout, channel)  # undoes 5. (6. sent dout into the branch)
    dz, dscale1, dbias1 = layer_norm_backward(dz, ln1)  # undoes 4.
    du = dout + dz  # undoes 6.: u reached y directly and through the branch, (B, S, C)
    dz, token_grads = token_mixing_backward(du, token)  # undoes 2. (3. sent du into the branch)
    dz, dscale0, dbias0 = layer_norm_backward(dz, ln0)  # undoes 1.
    dx = du + dz  # undoes 3.: (B, S, C)
    grads = {"LayerNorm_0/scale": dscale0, "LayerNorm_0/bias": dbias0, **prefixed(token_grads, "token_mixing"),
             "LayerNorm_1/scale": dscale1, "LayerNorm_1/bias": dbias1, **prefixed(channel_grads, "channel_mixing")}
    return dx, grads


# ================================================================================================================
# Patches, the stem, the pooling


def patchify(images: Array, p: int) -> Array:
    """(B, H, W, C_in) -> (B, S, P*P*C_in): non-overlapping P x P patches in row-major order over the patch grid,
    each flattened in (row, column, channel) order (the order of the stem kernel (P, P, C_in, C))."""
    b, h, w, c = images.shape
    grid = images.reshape(b, h // p, p, w // p, p, c)  # (B, H/P, P, W/P, P, C_in)
    grid = grid.transpose(0, 1, 3, 2, 4, 5)  # (B, H/P, W/P, P, P, C_in): patch row, patch column, then inside
    return grid.reshape(b, (h // p) * (w // p), p * p * c)  # (B, S, P*P*C_in)


def unpatchify(patches: Array, p: int, image_hw: tuple[int, int]) -> Array:
    """The inverse of ``patchify`` (B, S, P*P*C_in) -> (B, H, W, C_in): the patches put back in place."""
    b = patches.shape[0]
    h, w = image_hw
    grid = patches.reshape(b, h // p, w // p, p, p, -1)  # (B, H/P, W/P, P, P, C_in)
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)  # (B, H, W, C_in)


def stem_forward(images: Array, kernel: Array, bias: Array) -> tuple[Array, tuple]:
    """The per-patch linear map: images (B, H, W, C_in), kernel (P, P, C_in, C), bias (C,) -> (B, S, C)."""
    p = kernel.shape[0]
    patches = patchify(images, p)  # 1. (B, S, P*P*C_in)
    out, dense = dense_forward(patches, kernel.reshape(-1, kernel.shape[-1]), bias)  # 2. (B, S, C)
    return out, (dense, kernel.shape, images.shape[1:3])


def stem_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    dense, kernel_shape, image_hw = cache
    dpatches, dkernel, dbias = dense_backward(dout, dense)  # undoes 2.
    dimages = unpatchify(dpatches, kernel_shape[0], image_hw)  # undoes 1.: (B, H, W, C_in)
    return dimages, dkernel.reshape(kernel_shape), dbias


def mean_pool_forward(x: Array) -> tuple[Array, tuple]:
    """out[b, c] = mean over s of x[b, s, c].  x (B, S, C) -> out (B, C)."""
    return x.mean(axis=1), (x.shape,)


def mean_pool_backward(dout: Array, cache: tuple) -> Array:
    """Every token gets 1/S of its image's gradient: (B, C) -> (B, S, C)."""
    (shape,) = cache
    return np.broadcast_to(dout[:, None, :] / shape[1], shape).copy()


# ================================================================================================================
# Softmax cross-entropy, averaged over the batch


def softmax_cross_entropy_forward(logits: Array, labels: Array, label_smoothing: float = 0.0
                                  ) -> tuple[float, tuple]:
    """loss = -(1/B) sum_b sum_k q[b, k] log softmax(logits)[b, k],  q = (1 - eps) onehot(labels) + eps / K.
    logits (B, K), labels (B,) integers -> loss (a float)."""
    bsz, k = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)  # 1. (B, K): the same softmax, and exp never overflows
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # 2. (B, K): log softmax
    q = np.full((bsz, k), label_smoothing / k)  # 3. (B, K): the target distribution
    q[np.arange(bsz), labels] += 1.0 - label_smoothing
    loss = -(q * log_p).sum() / bsz  # 4.
    return float(loss), (log_p, q)


def softmax_cross_entropy_backward(dloss: float, cache: tuple) -> Array:
    """dloss/dlogits = (softmax(logits) - q) / B: the predicted minus the target distribution."""
    log_p, q = cache
    return dloss * (np.exp(log_p) - q) / log_p.shape[0]  # (B, K)


# ================================================================================================================
# The whole Mixer: stem -> N blocks -> LayerNorm -> mean over tokens -> head


def mixer_forward(images: Array, params: Params, gelu: str = "tanh") -> tuple[Array, tuple]:
    """images (B, H, W, C_in) -> logits (B, K), with the official parameter names (``MlpMixer.params``)."""
    p = params
    num_blocks = len({k.split("/")[0] for k in p if k.startswith("MixerBlock_")})
    x, stem = stem_forward(images, p["stem/kernel"], p["stem/bias"])  # 1. (B, S, C)
    blocks = []
    for i in range(num_blocks):
        x, block = mixer_block_forward(x, subtree(p, f"MixerBlock_{i}"), gelu)  # 2. (B, S, C)
        blocks.append(block)
    x, ln = layer_norm_forward(x, p["pre_head_layer_norm/scale"], p["pre_head_layer_norm/bias"])  # 3. (B, S, C)
    x, pool = mean_pool_forward(x)  # 4. (B, C)
    logits, head = dense_forward(x, p["head/kernel"], p["head/bias"])  # 5. (B, K)
    return logits, (stem, blocks, ln, pool, head)


def mixer_backward(dlogits: Array, cache: tuple) -> tuple[Array, Params]:
    """dlogits (B, K) -> dimages (B, H, W, C_in) and the gradient of every parameter (the same names)."""
    stem, blocks, ln, pool, head = cache
    grads: Params = {}
    dx, grads["head/kernel"], grads["head/bias"] = dense_backward(dlogits, head)  # undoes 5.: (B, C)
    dx = mean_pool_backward(dx, pool)  # undoes 4.: (B, S, C)
    dx, grads["pre_head_layer_norm/scale"], grads["pre_head_layer_norm/bias"] = layer_norm_backward(dx, ln)  # 3.
    for i in reversed(range(len(blocks))):  # undoes 2., the last block first
        dx, block_grads = mixer_block_backward(dx, blocks[i])
        grads.update(prefixed(block_grads, f"MixerBlock_{i}"))
    dimages, grads["stem/kernel"], grads["stem/bias"] = stem_backward(dx, stem)  # undoes 1.
    return dimages, grads


# ================================================================================================================
# The CNN's layers: convolution as im2col + one matrix multiply, GroupNorm, ReLU


def im2col(images: Array, k: int, stride: int, padding: int) -> Array:
    """Every K x K window of the zero-padded images, flattened in (row, column, channel) order:
    columns[b, y, x, (i K + j) C_in + c] = xpad[b, s y + i, s x + j, c].  (B, H, W, C_in) -> (B, H', W', K*K*C_in)
    with H' = (H + 2 pad - K) // s + 1. One slice of the padded images per kernel offset (i, j)."""
    b, h, w, c = images.shape
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    xpad = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))  # (B, H + 2p, W + 2p, C_in)
    columns = np.zeros((b, h_out, w_out, k, k, c), images.dtype)  # (B, H', W', K, K, C_in)
    for i in range(k):
        for j in range(k):  # offset (i, j) of every window: a strided slice of xpad
            columns[:, :, :, i, j, :] = xpad[:, i:i + stride * h_out:stride, j:j + stride * w_out:stride, :]
    return columns.reshape(b, h_out, w_out, k * k * c)


def col2im(columns: Array, image_hw: tuple[int, int], k: int, stride: int, padding: int) -> Array:
    """The adjoint of ``im2col``: each window's entries added back onto the pixels they were read from (where
    windows overlap, the pixel gets the sum); the padding's shares are dropped. -> (B, H, W, C_in)."""
    b, h_out, w_out, _ = columns.shape
    h, w = image_hw
    windows = columns.reshape(b, h_out, w_out, k, k, -1)  # (B, H', W', K, K, C_in)
    xpad = np.zeros((b, h + 2 * padding, w + 2 * padding, windows.shape[-1]), columns.dtype)
    for i in range(k):
        for j in range(k):  # the same slices as im2col, now receiving
            xpad[:, i:i + stride * h_out:stride, j:j + stride * w_out:stride, :] += windows[:, :, :, i, j, :]
    return xpad[:, padding:padding + h, padding:padding + w, :]


def conv_forward(images: Array, kernel: Array, stride: int = 1, padding: int = 0) -> tuple[Array, tuple]:
    """out[b, y, x, o] = sum_{i, j, c} xpad[b, s y + i, s x + j, c] kernel[i, j, c, o] (no bias: a norm follows).
    images (B, H, W, C_in), kernel (K, K, C_in, C_out) -> out (B, H', W', C_out)."""
    k, _, c_in, c_out = kernel.shape
    columns = im2col(images, k, stride, padding)  # 1. (B, H', W', K*K*C_in)
    out = columns @ kernel.reshape(k * k * c_in, c_out)  # 2. (B, H', W', C_out)
    return out, (columns, kernel, images.shape[1:3], stride, padding)


def conv_backward(dout: Array, cache: tuple) -> tuple[Array, Array]:
    """dcolumns = dout kernel^T, dkernel = columns^T dout, dimages = col2im(dcolumns).  Returns dimages, dkernel."""
    columns, kernel, image_hw, stride, padding = cache
    k, _, c_in, c_out = kernel.shape
    dcolumns = dout @ kernel.reshape(k * k * c_in, c_out).T  # undoes 2.: (B, H', W', K*K*C_in)
    dkernel = columns.reshape(-1, k * k * c_in).T @ dout.reshape(-1, c_out)  # (K*K*C_in, C_out)
    dimages = col2im(dcolumns, image_hw, k, stride, padding)  # undoes 1.: (B, H, W, C_in)
    return dimages, dkernel.reshape(kernel.shape)


GROUP_NORM_EPS = 1e-6


def group_norm_forward(x: Array, scale: Array, bias: Array, groups: int, eps: float = GROUP_NORM_EPS
                       ) -> tuple[Array, tuple]:
    """LayerNorm's statistics over each image's group of C/G channels and all H x W positions, then a per-channel
    scale and bias.  x (B, H, W, C), scale (C,), bias (C,) -> out (B, H, W, C)."""
    b, h, w, c = x.shape
    xg = x.reshape(b, h * w, groups, c // groups)  # 1. (B, HW, G, C/G): a group's values on axes 1 and 3
    mu = xg.mean(axis=(1, 3), keepdims=True)  # 2. (B, 1, G, 1)
    var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)  # 3. (B, 1, G, 1)
    r = 1.0 / np.sqrt(var + eps)  # 4. (B, 1, G, 1)
    xhat = ((xg - mu) * r).reshape(x.shape)  # 5. (B, H, W, C)
    out = xhat * scale + bias  # 6. (B, H, W, C)
    return out, (xhat, r, scale, groups)


def group_norm_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """LayerNorm's backward (``layer_norm_backward``: the three paths summed) with the means over each group:
    dx = r (d - mean_g(d) - xhat mean_g(d xhat)),  d = dout * scale."""
    xhat, r, scale, groups = cache
    b, h, w, c = xhat.shape
    dscale = (dout * xhat).sum(axis=(0, 1, 2))  # undoes 6.: (C,)
    dbias = dout.sum(axis=(0, 1, 2))  # (C,)
    d = (dout * scale).reshape(b, h * w, groups, c // groups)  # (B, HW, G, C/G)
    xg = xhat.reshape(d.shape)
    mean_d = d.mean(axis=(1, 3), keepdims=True)  # (B, 1, G, 1): the path through mu
    mean_dx = (d * xg).mean(axis=(1, 3), keepdims=True)  # (B, 1, G, 1): the path through var
    dx = r * (d - mean_d - xg * mean_dx)  # undoes 5.-1.: (B, HW, G, C/G)
    return dx.reshape(xhat.shape), dscale, dbias


def relu_forward(x: Array) -> tuple[Array, tuple]:
    """out = max(x, 0)."""
    return np.maximum(x, 0.0), (x,)


def relu_backward(dout: Array, cache: tuple) -> Array:
    """The gradient passes where x > 0 and stops elsewhere (0 at the kink, as every library does)."""
    (x,) = cache
    return dout * (x > 0)


# ================================================================================================================
# The CNN: pre-activation residual blocks with GroupNorm (nn/cnn.py tells the design)


def residual_block_forward(x: Array, p: Params, stride: int, groups: int) -> tuple[Array, tuple]:
    """a = ReLU(GN_1(x)); h = ReLU(GN_2(conv1_stride(a))); y = shortcut + conv2(h), the shortcut x itself or, when
    ``p`` has ``shortcut/kernel``, a 1x1 convolution of a with the stride.  x (B, H, W, C_in) -> y (B, H', W', C)."""
    a, norm1 = group_norm_forward(x, p["norm1/scale"], p["norm1/bias"], groups)  # 1. (B, H, W, C_in)
    a, relu1 = relu_forward(a)  # 2.
    h, conv1 = conv_forward(a, p["conv1/kernel"], stride, padding=1)  # 3. (B, H', W', C)
    h, norm2 = group_norm_forward(h, p["norm2/scale"], p["norm2/bias"], groups)  # 4.
    h, relu2 = relu_forward(h)  # 5.
    h, conv2 = conv_forward(h, p["conv2/kernel"], 1, padding=1)  # 6. (B, H', W', C)
    proj = None
    if "shortcut/kernel" in p:
        shortcut, proj = conv_forward(a, p["shortcut/kernel"], stride, padding=0)  # 7. (B, H', W', C)
    else:
        shortcut = x  # 7. the identity
    y = h + shortcut  # 8.
    return y, (norm1, relu1, conv1, norm2, relu2, conv2, proj)


def residual_block_backward(dy: Array, cache: tuple) -> tuple[Array, Params]:
    norm1, relu1, conv1, norm2, relu2, conv2, proj = cache
    g: Params = {}
    dh, g["conv2/kernel"] = conv_backward(dy, conv2)  # undoes 6. (8. sent dy to both terms)
    dh = relu_backward(dh, relu2)  # undoes 5.
    dh, g["norm2/scale"], g["norm2/bias"] = group_norm_backward(dh, norm2)  # undoes 4.
    da, g["conv1/kernel"] = conv_backward(dh, conv1)  # undoes 3.: (B, H, W, C_in)
    if proj is not None:
        da_shortcut, g["shortcut/kernel"] = conv_backward(dy, proj)  # undoes 7.
        da = da + da_shortcut  # a fed both paths
    da = relu_backward(da, relu1)  # undoes 2.
    dx, g["norm1/scale"], g["norm1/bias"] = group_norm_backward(da, norm1)  # undoes 1.
    if proj is None:
        dx = dx + dy  # undoes 7.: the identity passes dy on to x
    return dx, g


def _resnet_blocks(params: Params) -> list[tuple[str, int]]:
    """(name, stride) of every residual block, in order: the first block of every stage but the first halves."""
    names = sorted({k.rsplit("/", 2)[0] for k in params if k.startswith("stage")},
                   key=lambda n: tuple(int(part[5:]) for part in n.split("/")))  # "stage{s}/block{j}"
    return [(n, 2 if n.split("/")[0] != "stage0" and n.endswith("/block0") else 1) for n in names]


def resnet_forward(images: Array, params: Params, groups: int) -> tuple[Array, tuple]:
    """images (B, H, W, C_in) -> logits (B, K), with ``ResNet.params``' names and its ``groups``."""
    p = params
    x, stem = conv_forward(images, p["stem/kernel"], 1, padding=1)  # 1. (B, H, W, w_0)
    blocks = []
    for name, stride in _resnet_blocks(p):
        x, block = residual_block_forward(x, subtree(p, name), stride, groups)  # 2. (B, H/4, W/4, w_last) at the end
        blocks.append(block)
    x, norm = group_norm_forward(x, p["pre_head_norm/scale"], p["pre_head_norm/bias"], groups)  # 3.
    x, relu = relu_forward(x)  # 4.
    b, h, w, c = x.shape
    x, pool = mean_pool_forward(x.reshape(b, h * w, c))  # 5. (B, C)
    logits, head = dense_forward(x, p["head/kernel"], p["head/bias"])  # 6. (B, K)
    return logits, (stem, blocks, norm, relu, pool, head, (b, h, w, c), _resnet_blocks(p))


def resnet_backward(dlogits: Array, cache: tuple) -> tuple[Array, Params]:
    stem, blocks, norm, relu, pool, head, shape, names = cache
    grads: Params = {}
    dx, grads["head/kernel"], grads["head/bias"] = dense_backward(dlogits, head)  # undoes 6.
    dx = mean_pool_backward(dx, pool).reshape(shape)  # undoes 5.
    dx = relu_backward(dx, relu)  # undoes 4.
    dx, grads["pre_head_norm/scale"], grads["pre_head_norm/bias"] = group_norm_backward(dx, norm)  # undoes 3.
    for (name, _), block in reversed(list(zip(names, blocks, strict=True))):  # undoes 2., the last block first
        dx, block_grads = residual_block_backward(dx, block)
        grads.update(prefixed(block_grads, name))
    dimages, grads["stem/kernel"] = conv_backward(dx, stem)  # undoes 1.
    return dimages, grads

