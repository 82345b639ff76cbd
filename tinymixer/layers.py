"""The primitives of an MLP-Mixer, each a forward/backward pair.

Convention (as in CS231n's ``layers.py``): ``forward(inputs...) -> (out, cache)`` and
``backward(dout, cache) -> gradients``, where ``cache`` holds exactly what the backward needs and ``dout`` is
dL/d(out) for some scalar loss L. The backward of each function differentiates exactly what its forward computes.

Every function is written once against the array module of its inputs (``xp``: NumPy or CuPy). Constants are
Python floats, which never promote a float32 array to float64 (NumPy >= 2 "weak scalar" rules).
"""

from __future__ import annotations

import math
from typing import Any

from .backend import array_module
from .special import erf

Array = Any  # numpy.ndarray or cupy.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Dense (affine) layer


def dense_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple]:
    """Affine map of the last axis: ``out = x @ w + b``.

    Inputs: x (..., D_in), w (D_in, D_out), b (D_out,).  Returns out (..., D_out) and the cache (x, w).
    The leading axes are flattened so that the work is one 2-D matrix multiply (one BLAS GEMM call).
    """
    d_in, d_out = w.shape
    out = x.reshape(-1, d_in) @ w  # (N, D_out), N = product of the leading axes
    out += b
    return out.reshape(*x.shape[:-1], d_out), (x, w)


def dense_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of ``out = x @ w + b``:  dx = dout @ w^T,  dw = x^T @ dout,  db = sum of dout over rows.

    Inputs: dout (..., D_out).  Returns dx (..., D_in), dw (D_in, D_out), db (D_out,).
    """
    x, w = cache
    d_in, d_out = w.shape
    x2 = x.reshape(-1, d_in)  # (N, D_in)
    dout2 = dout.reshape(-1, d_out)  # (N, D_out)
    dx = (dout2 @ w.T).reshape(x.shape)  # (..., D_in)
    dw = x2.T @ dout2  # (D_in, D_out)
    db = dout2.sum(axis=0)  # (D_out,)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------------------------
# GELU, written as x * g(x) so that both forms share one backward:  d/dx [x g(x)] = g(x) + x g'(x)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_FORMS = ("tanh", "erf")


def gelu_forward(x: Array, approximate: str = "tanh") -> tuple[Array, tuple]:
    """Gaussian Error Linear Unit, ``gelu(x) = x * g(x)``, elementwise.

    - ``approximate="tanh"`` (what the official Mixer uses, Flax's default):
      ``g(x) = (1 + tanh(u)) / 2`` with ``u = sqrt(2/pi) * (x + 0.044715 x^3)``.
    - ``approximate="erf"`` (exact): ``g(x) = Phi(x) = (1 + erf(x / sqrt(2))) / 2``, the standard normal CDF.

    Returns out (same shape) and the cache (x, g, form).
    """
    xp = array_module(x)
    if approximate == "tanh":
        u = x * x  # (...)  building u in place keeps the temporaries to one
        u *= _TANH_CUBIC
        u += 1.0
        u *= x
        u *= _SQRT_2_OVER_PI  # u = sqrt(2/pi) (x + 0.044715 x^3)
        g = xp.tanh(u, out=u)
        g += 1.0
        g *= 0.5
    elif approximate == "erf":
        g = erf(x * _INV_SQRT_2)
        g += 1.0
        g *= 0.5
    else:
        raise ValueError(f"unknown GELU form {approximate!r}: choose 'tanh' (the official model's) or 'erf'")
    return x * g, (x, g, approximate)


def gelu_backward(dout: Array, cache: tuple) -> Array:
    """dx = dout * (g(x) + x g'(x)), with g' the derivative of the g the forward used:

    - tanh: g'(x) = (1 - t^2)/2 * sqrt(2/pi) * (1 + 3 * 0.044715 x^2), where t = tanh(u) = 2g - 1 (from the cache);
    - erf:  g'(x) = phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    """
    x, g, form = cache
    xp = array_module(x)
    if form == "tanh":
        t = 2.0 * g - 1.0
        dg = 1.0 - t * t
        dg *= 0.5 * _SQRT_2_OVER_PI
        dg *= 1.0 + (3.0 * _TANH_CUBIC) * (x * x)
    else:
        dg = xp.exp(-0.5 * (x * x))
        dg *= _INV_SQRT_2PI
    dg *= x
    dg += g  # d gelu / dx
    dg *= dout
    return dg


# ----------------------------------------------------------------------------------------------------------------
# LayerNorm over the last (channel) axis

LAYER_NORM_EPS = 1e-6  # the official Mixer's (Flax's default)


def layer_norm_forward(x: Array, scale: Array, bias: Array, eps: float = LAYER_NORM_EPS) -> tuple[Array, tuple]:
    """``out = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias``, statistics over the last axis.

    Inputs: x (..., C), scale (C,), bias (C,).  Returns out (..., C) and the cache (xhat, rstd, scale) where
    ``xhat`` is the normalised input and ``rstd = 1 / sqrt(var + eps)`` (..., 1).
    """
    xp = array_module(x)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1), biased, as in every LayerNorm
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc
    xhat *= rstd  # (..., C), reuses xc's memory
    out = xhat * scale  # (..., C)
    out += bias
    return out, (xhat, rstd, scale)


def layer_norm_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of LayerNorm. With ``dxhat = dout * scale`` and means over the C channels,

        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

    (the two mean terms are the gradient flowing through the mean and the variance), and
    ``dscale = sum(dout * xhat)``, ``dbias = sum(dout)`` over all leading axes.
    Returns dx (..., C), dscale (C,), dbias (C,).
    """
    xhat, rstd, scale = cache
    c = xhat.shape[-1]
    dout2 = dout.reshape(-1, c)  # (N, C)
    xhat2 = xhat.reshape(-1, c)  # (N, C)
    dbias = dout2.sum(axis=0)  # (C,)
    dscale = (dout2 * xhat2).sum(axis=0)  # (C,)
    dxhat = dout * scale  # (..., C)
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)  # (..., 1)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)  # (..., 1)
    dx = dxhat
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd  # (..., C)
    return dx, dscale, dbias


# ----------------------------------------------------------------------------------------------------------------
# Patches and the stem (a stride-P, P x P convolution written as one matrix multiply)


def patchify(images: Array, patch_size: int) -> Array:
    """Cut images into non-overlapping P x P patches, each flattened in (row, column, channel) order.

    Inputs: images (B, H, W, C_in) with H and W multiples of P.  Returns patches (B, S, P*P*C_in) with
    S = (H/P)(W/P) tokens in row-major order over the patch grid: the order the official model flattens its
    stem output in, and the order its kernel (P, P, C_in, C) reshapes to (P*P*C_in, C).
    """
    b, h, w, c = images.shape
    p = patch_size
    grid = images.reshape(b, h // p, p, w // p, p, c)  # (B, H/P, P, W/P, P, C_in)
    grid = grid.transpose(0, 1, 3, 2, 4, 5)  # (B, H/P, W/P, P, P, C_in)
    return grid.reshape(b, (h // p) * (w // p), p * p * c)  # (B, S, P*P*C_in), a copy


def unpatchify(patches: Array, patch_size: int, image_hw: tuple[int, int]) -> Array:
    """The inverse of ``patchify``: (B, S, P*P*C_in) -> (B, H, W, C_in). Carries gradients back to pixels."""
    b = patches.shape[0]
    h, w = image_hw
    p = patch_size
    c = patches.shape[-1] // (p * p)
    grid = patches.reshape(b, h // p, w // p, p, p, c)  # (B, H/P, W/P, P, P, C_in)
    grid = grid.transpose(0, 1, 3, 2, 4, 5)  # (B, H/P, P, W/P, P, C_in)
    return grid.reshape(b, h, w, c)  # (B, H, W, C_in)


def stem_forward(images: Array, kernel: Array, bias: Array) -> tuple[Array, tuple]:
    """Patch embedding: every P x P patch goes through one shared linear map to C channels.

    ``out[b, s] = patch[b, s] . kernel + bias`` — the paper's "per-patch fully-connected layer", identical to
    a convolution with a P x P kernel and stride P.  Inputs: images (B, H, W, C_in), kernel (P, P, C_in, C),
    bias (C,).  Returns out (B, S, C) and the cache.
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


# ----------------------------------------------------------------------------------------------------------------
# Global average pooling over tokens


def mean_pool_forward(x: Array) -> tuple[Array, tuple]:
    """``out[b, c] = mean over s of x[b, s, c]``.  Inputs: x (B, S, C).  Returns out (B, C), cache (x.shape,)."""
    return x.mean(axis=1), (x.shape,)


def mean_pool_backward(dout: Array, cache: tuple) -> Array:
    """Each of the S tokens received 1/S of the gradient: dx[b, s, c] = dout[b, c] / S.  Returns dx (B, S, C)."""
    (shape,) = cache
    xp = array_module(dout)
    dx = xp.empty(shape, dtype=dout.dtype)  # (B, S, C)
    dx[...] = (dout * (1.0 / shape[1]))[:, None, :]
    return dx


# ----------------------------------------------------------------------------------------------------------------
# Softmax cross-entropy


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Mean cross-entropy between softmax(logits) and the (optionally smoothed) one-hot labels, and its gradient.

    With K classes, target ``q = (1 - eps) onehot(label) + eps / K`` and ``log p = logits - logsumexp(logits)``
    (computed after subtracting the row maximum, so exp never overflows):

        loss = -(1/B) sum_b sum_k q[b, k] log p[b, k],      dloss/dlogits = (softmax(logits) - q) / B

    Inputs: logits (B, K) float, labels (B,) integers in [0, K).  Returns (loss, dlogits): the loss as a 0-d
    array on the logits' device (no host sync; call ``float()`` when you want to print it), dlogits (B, K).
    """
    xp = array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got shape {tuple(logits.shape)}")
    bsz, k = logits.shape
    labels = _checked_labels(labels, bsz, k, xp)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    z = logits - logits.max(axis=1, keepdims=True)  # (B, K), max entry 0
    exp_z = xp.exp(z)  # (B, K)
    sum_exp = exp_z.sum(axis=1, keepdims=True)  # (B, 1)
    log_p = z - xp.log(sum_exp)  # (B, K)
    rows = xp.arange(bsz)
    nll = -log_p[rows, labels]  # (B,) the loss of the true class
    if label_smoothing:
        # sum_k q_k (-log p_k) = (1 - eps) nll + eps * mean_k(-log p_k)
        loss = ((1.0 - label_smoothing) * nll - label_smoothing * log_p.mean(axis=1)).mean()
    else:
        loss = nll.mean()
    dlogits = exp_z
    dlogits /= sum_exp  # softmax, (B, K)
    if label_smoothing:
        dlogits -= label_smoothing / k
    dlogits[rows, labels] -= 1.0 - label_smoothing
    dlogits *= 1.0 / bsz
    return loss, dlogits


def _checked_labels(labels: Array, batch: int, num_classes: int, xp: Any) -> Array:
    """Validate integer class labels (on the host when they come from the host, so no GPU sync) and move them."""
    dtype = getattr(labels, "dtype", None)
    if dtype is None or dtype.kind not in "iu":
        raise TypeError(
            f"labels must be an integer array of class indices, got {dtype or type(labels).__name__}; "
            "convert with labels.astype(int)"
        )
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},) to match the logits' batch, got {tuple(labels.shape)}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for a {num_classes}-class model; found values in "
            f"[{int(labels.min())}, {int(labels.max())}]. Build the model with the right num_classes."
        )
    return xp.asarray(labels)
