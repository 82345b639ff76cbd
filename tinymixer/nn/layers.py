"""The primitives of the networks (the Mixer's, and the CNN's GroupNorm and ReLU), each a forward/backward pair
(the patch stem and the convolution, made of an image's windows, are in ``conv.py``):
the same functions as ``reference.py``, faster (``tests/test_reference.py`` holds them equal in float64 to 1e-12).
Read ``reference.py`` for the math; here each speed trick is named where it is used:

- cache-sized row blocks on the cores (``chunks.for_row_blocks``): GELU, LayerNorm, GroupNorm, the optimisers;
- sums and means as BLAS matrix-vector products with a constant vector (``constant_vector``);
- the Dense_0 bias fused into the GELU pass (``_gelu_bias_forward``, private: it writes into its input);
- GELU's derivative computed in the forward, while x is in the cache; ``out=`` to reuse memory just read;
- token mixing as a stacked matrix multiply on axis -2, without transposed copies (``dense_forward``);
- on a GPU, fused kernels (``backend.fused``) instead of one launch per operation.

Public functions never modify their inputs; an explicit ``out=`` is the only array they write that they did not
make.

Convention (as in CS231n's ``layers.py``): ``forward(inputs...) -> (out, cache)`` and
``backward(dout, cache) -> gradients``, where ``cache`` holds exactly what the backward needs and ``dout`` is
dL/d(out) for some scalar loss L. The backward of each function differentiates exactly what its forward computes.

Every function is written once against the array module of its inputs (``xp``: NumPy or CuPy). Constants are
Python floats, which never promote a float32 array to float64 (NumPy >= 2 "weak scalar" rules).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np

from ..backend import array_module, fused
from ..chunks import for_row_blocks, rows, scratch
from .masks import KeepMask, as_array, kept
from .special import erf

Array = Any  # numpy.ndarray or cupy.ndarray


# ----------------------------------------------------------------------------------------------------------------
# Constant vectors: the operands that turn sums and means into matrix-vector products

_constants: dict[tuple, Array] = {}  # (xp, n, value, dtype) -> a read-only vector, made once


def constant_vector(xp: Any, n: int, value: float, dtype: Any, column: bool = False) -> Array:
    """A vector of n equal values (ones for row sums, 1/C for means as matrix-vector products), made once per
    size and dtype and kept: on a GPU each one made anew is a kernel. Only ever read (an operand of a GEMV).
    ``column``: shaped (n, 1), so that ``x @ it`` keeps a trailing axis of 1 (x (..., n) -> (..., 1))."""
    key = (xp, n, float(value), np.dtype(dtype).str, column)
    vector = _constants.get(key)
    if vector is None:
        if len(_constants) > 256:  # many shapes seen (a notebook trying sizes): start again
            _constants.clear()
        vector = _constants[key] = xp.full((n, 1) if column else n, value, dtype=dtype)
    return vector


# ----------------------------------------------------------------------------------------------------------------
# Dense (affine) layer


def dense_forward(x: Array, w: Array, b: Array | None, axis: int = -1) -> tuple[Array, tuple]:
    """Affine map of one axis of x: the last (``axis=-1``, ``out = x @ w + b``) or the one before it (``axis=-2``).

    - ``axis=-1``: x (..., D_in) -> out (..., D_out). The leading axes are flattened so that the work is one 2-D
      matrix multiply (one BLAS GEMM call).
    - ``axis=-2``: x (..., D_in, C) -> out (..., D_out, C), ``out[n] = w^T @ x[n] + b[:, None]`` for every
      leading index n: the same map applied to every column. This is token mixing on a (B, S, C) table without
      transposing it: a stacked matrix multiply (tiny/4: 1.0 ms, against 1.75 ms for a transposed copy and one
      2-D GEMM).

    w (D_in, D_out), b (D_out,) or None (the caller adds the bias itself, fused into its next elementwise pass:
    see ``gelu_forward``).  Returns out and the cache (x, as (N, D_in) for ``axis=-1``; w; the axis; x's shape).
    """
    if axis not in (-1, -2):
        raise ValueError(f"dense_forward maps axis -1 or -2, got axis={axis}")
    d_in, d_out = w.shape
    if axis == -1:
        x2 = x.reshape(-1, d_in)  # (N, D_in), N = product of the leading axes; kept for dw (no second copy)
        out = x2 @ w  # (N, D_out)
        if b is not None:
            out += b
        return out.reshape(*x.shape[:-1], d_out), (x2, w, axis, x.shape)
    out = array_module(x).matmul(_stacked(w.T, x), x)  # (..., D_out, C): one GEMM per leading index
    if b is not None:
        out += b[:, None]
    return out, (x, w, axis, x.shape)


def _stacked(w: Array, like: Array) -> Array:
    """The matrix w as a stack over ``like``'s leading axes, for a stacked matmul. On NumPy w itself (matmul
    broadcasts it for free). On a GPU an explicit stack: CuPy's matmul broadcasts a 2-D operand over a stack by
    building three arrays of pointers and running B small GEMMs one by one (4 kernels); a stacked operand is one
    copy (w is small) and one strided-batched GEMM (2 kernels)."""
    xp = array_module(w)
    return w if xp is np else xp.broadcast_to(w, (*like.shape[:-2], *w.shape))


def dense_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of the dense map. ``axis=-1``: dx = dout @ w^T, dw = x^T @ dout, db = sum of dout over rows.
    ``axis=-2``: dx[n] = w @ dout[n], dw = sum_n x[n] @ dout[n]^T, db = sum of dout over all axes but -2.

    Inputs: dout shaped like the forward's out.  Returns dx (x's shape), dw (D_in, D_out), db (D_out,).
    """
    x, w, axis, x_shape = cache
    xp = array_module(x)
    d_in, d_out = w.shape
    if axis == -1:  # x: the input as (N, D_in)
        dout2 = dout.reshape(-1, d_out)  # (N, D_out)
        dx = (dout2 @ w.T).reshape(x_shape)  # (..., D_in)
        dw = x.T @ dout2  # (D_in, D_out)
        ones = constant_vector(xp, dout2.shape[0], 1.0, dout.dtype)
        db = ones @ dout2  # (D_out,): the row sum as one BLAS call (2-3x a .sum(0))
        return dx, dw, db
    dx = xp.matmul(_stacked(w, dout), dout)  # (..., D_in, C)
    per_item = xp.matmul(x, dout.swapaxes(-1, -2))  # (..., D_in, D_out): one small GEMM per leading index
    if xp is not np:  # a GPU: two reduction kernels, no views (on the CPU the GEMVs below are faster)
        leading = tuple(range(dout.ndim - 2))
        return dx, per_item.sum(axis=leading), dout.sum(axis=(*leading, dout.ndim - 1))
    dw = per_item.reshape(-1, d_in * d_out).sum(axis=0).reshape(d_in, d_out)
    ones = constant_vector(xp, dout.shape[-1], 1.0, dout.dtype)
    column_sums = dout.reshape(-1, dout.shape[-1]) @ ones  # (N * D_out,)
    db = constant_vector(xp, column_sums.size // d_out, 1.0, dout.dtype) @ column_sums.reshape(-1, d_out)  # (D_out,)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------------------------
# GELU, written as x * g(x) so that both forms share one derivative:  gelu'(x) = g(x) + x g'(x)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_FORMS = ("tanh", "erf")


def gelu_forward(x: Array, approximate: str = "tanh", train: bool = True, out: Array | None = None
                 ) -> tuple[Array, tuple]:
    """Gaussian Error Linear Unit, ``gelu(x) = x * g(x)``, elementwise (``reference.gelu_tanh_forward`` and
    ``reference.gelu_erf_forward``, faster).

    - ``approximate="tanh"`` (what the official Mixer uses, Flax's default):
      ``g(x) = (1 + t) / 2`` with ``t = tanh(u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``, so that
      ``gelu'(x) = g + x g' = g + x u' (1 - t^2) / 2 = g + 2 u' gelu(x) (1 - g)`` (as ``1 - t^2 = 4 g (1 - g)``),
      with ``u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2)``: written with gelu(x) itself, it costs one pass less;
    - ``approximate="erf"`` (exact): ``g(x) = Phi(x) = (1 + erf(x / sqrt(2))) / 2``, the standard normal CDF, so
      that ``gelu'(x) = Phi(x) + x phi(x)`` with ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.

    Tricks: cache-sized row blocks on the cores (``chunks.for_row_blocks``); with ``train`` the cache holds the
    local derivative ``gelu'(x)``, computed while each block of x is in the CPU cache (the backward is then one
    multiply; without ``train`` the cache is empty); on a GPU, fused kernels. x is never modified, unless
    ``out=x`` says it may be overwritten by the result (which saves a pass of fresh memory when the caller has no
    further use for x); ``out`` must be C-contiguous like x. Returns out (same shape) and the cache (dgelu or None,).
    """
    return _gelu_bias_forward(x, None, approximate, train, out)


def _gelu_bias_forward(x: Array, bias: Array | None, approximate: str = "tanh", train: bool = True,
                       out: Array | None = None) -> tuple[Array, tuple]:
    """``gelu(x + bias)`` with the preceding dense layer's bias fused in (``blocks.mlp_block_forward``): the bias
    is added to x IN PLACE inside each row block, so that the pre-activation goes through memory once instead of
    twice. x is lost (pass x only when it has no other reader). ``bias`` (D,) for x (..., D), or (D, 1) for x
    (..., D, C) (one value per row D: the token-mixing layout), or None (``gelu_forward``)."""
    if approximate not in GELU_FORMS:
        raise ValueError(f"unknown GELU form {approximate!r}: choose 'tanh' (the official model's) or 'erf'")
    xp = array_module(x)
    if xp is not np and approximate == "tanh":  # a GPU: the whole formula in one fused kernel (two with train)
        return _gelu_tanh_on_device(x, bias, train, out)
    x = xp.ascontiguousarray(x)  # the blocks are views of rows: a transposed input is copied first
    out = xp.empty(x.shape, x.dtype) if out is None else _checked_out(out, x)
    dgelu = xp.empty(x.shape, x.dtype) if train else out  # without train the derivative is not kept
    width = x.shape[-1]
    if bias is not None and bias.ndim > 1:  # rows of the trailing axes' size, each with the whole bias pattern
        bias = xp.broadcast_to(bias, x.shape[-bias.ndim:]).reshape(-1)  # a copy the size of one (D, C) slab
        width = bias.size
    kernel = _gelu_tanh_block if approximate == "tanh" else _gelu_erf_block
    x2, out2, dgelu2 = (a.reshape(-1, width) for a in (x, out, dgelu))
    for_row_blocks(partial(kernel, bias=bias, train=train), x2, out2, dgelu2)
    return out, ((dgelu if train else None),)


# The kernels work on one row block; `out` may be `x` itself, so x is read for the last time by the final multiply.

def _gelu_tanh_block(x: Array, out: Array, dgelu: Array, bias: Array | None, train: bool) -> None:
    xp = array_module(x)
    if bias is not None:
        x += bias
    x2, g = scratch("gelu_x2", x), scratch("gelu_g", x)
    xp.multiply(x, x, out=x2)  # x^2
    xp.multiply(x2, _SQRT_2_OVER_PI * _TANH_CUBIC, out=g)
    g += _SQRT_2_OVER_PI
    g *= x  # u = sqrt(2/pi) (x + 0.044715 x^3)
    xp.tanh(g, out=g)  # t
    g *= 0.5
    g += 0.5  # g = (1 + t) / 2
    xp.multiply(x, g, out=out)  # gelu = x g; x's last use (out may be x)
    if train:
        du2 = x2
        du2 *= 6.0 * _TANH_CUBIC * _SQRT_2_OVER_PI
        du2 += 2.0 * _SQRT_2_OVER_PI  # 2 u'(x) = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        xp.subtract(1.0, g, out=dgelu)
        dgelu *= out
        dgelu *= du2
        dgelu += g  # gelu' = g + 2 u' gelu (1 - g)


@fused
def _gelu_tanh_fused(xp: Any, x: Array, bias: Any) -> Array:
    """gelu(z) = z (1 + tanh(u)) / 2, u = sqrt(2/pi) (z + 0.044715 z^3), z = x + bias: one kernel on a GPU."""
    z = x + bias
    return 0.5 * z * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (z + _TANH_CUBIC * z * z * z)))


@fused
def _gelu_tanh_slope_fused(xp: Any, x: Array, bias: Any) -> Array:
    """gelu'(z) = g + z u' (1 - t^2) / 2 with t = tanh(u), g = (1 + t) / 2, u' = sqrt(2/pi) (1 + 3 * 0.044715 z^2)."""
    z = x + bias
    t = xp.tanh(_SQRT_2_OVER_PI * (z + _TANH_CUBIC * z * z * z))
    slope = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * z * z)
    return 0.5 * (1.0 + t) + 0.5 * z * slope * (1.0 - t * t)


def _gelu_tanh_on_device(x: Array, bias: Array | None, train: bool, out: Array | None) -> tuple[Array, tuple]:
    """The tanh GELU on CuPy arrays: the same function as the row-block kernel, as fused kernels (one pass each
    instead of some fifteen kernel launches). x is left as it was; the result is a new array, written into
    ``out`` only when ``out`` is another array than x (``out=x`` says x is no longer needed: nothing to copy)."""
    b = x.dtype.type(0) if bias is None else bias  # a (D, 1) bias of the token layout broadcasts over C as well
    y = _gelu_tanh_fused(x, b)
    dgelu = _gelu_tanh_slope_fused(x, b) if train else None
    return _into(out, x, y), (dgelu,)


def _gelu_erf_block(x: Array, out: Array, dgelu: Array, bias: Array | None, train: bool) -> None:
    xp = array_module(x)
    if bias is not None:
        x += bias
    g = scratch("gelu_g", x)
    g[...] = erf(x * _INV_SQRT_2)
    g += 1.0
    g *= 0.5  # g = Phi(x)
    if train:
        xp.multiply(x, x, out=dgelu)
        dgelu *= -0.5
        xp.exp(dgelu, out=dgelu)
        dgelu *= _INV_SQRT_2PI  # phi(x)
        dgelu *= x
        dgelu += g  # Phi(x) + x phi(x)
    xp.multiply(x, g, out=out)  # gelu = x Phi(x)


def gelu_backward(dout: Array, cache: tuple, out: Array | None = None) -> Array:
    """dx = dout * gelu'(x), the derivative of the form the forward computed (cached by the forward).
    ``out``: where to write dx (``out=dout`` reuses dout's memory, C-contiguous)."""
    (dgelu,) = cache
    if dgelu is None:
        raise RuntimeError("gelu_backward needs the cache of gelu_forward(..., train=True)")
    xp = array_module(dgelu)
    if xp is not np:  # a GPU: one kernel over the whole array
        return xp.multiply(dout, dgelu, out=None if out is None else _checked_out(out, dgelu))
    dx = xp.empty(dgelu.shape, dgelu.dtype) if out is None else _checked_out(out, dgelu)
    for_row_blocks(_multiply_block, rows(dout), rows(dgelu), rows(dx))
    return dx


def _checked_out(out: Array, like: Array) -> Array:
    """An ``out=`` array must match and be C-contiguous: the row blocks written into it must be views of it."""
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {like.dtype} array of shape {tuple(like.shape)}, got "
                         f"{out.dtype} {tuple(out.shape)} (C-contiguous: {out.flags.c_contiguous})")
    return out


def _into(out: Array | None, x: Array, result: Array) -> Array:
    """A device path's result where the caller asked for it: a fused kernel writes a new array, copied into
    ``out`` only when ``out`` is another array than the input x (``out=x`` says x is no longer needed)."""
    if out is None or out is x:
        return result
    _checked_out(out, result)[...] = result
    return out


def _multiply_block(a: Array, b: Array, out: Array) -> None:
    array_module(a).multiply(a, b, out=out)


# ----------------------------------------------------------------------------------------------------------------
# Dropout and stochastic depth: random keep masks with inverted scaling
#
# The masks are arguments, never drawn inside a forward: a gradient check holds them fixed (the function is then
# deterministic and linear in x), and a training run draws them from its own seeded generator, so that a resumed
# run draws the same masks (``MlpMixer.draw_masks``; how a mask is computed on the device: ``masks.py``).


def dropout_forward(x: Array, rate: float, mask: Array, out: Array | None = None) -> tuple[Array, tuple]:
    """Inverted dropout, elementwise:  ``out = x * mask / (1 - rate)``.

    Inputs: x (any shape), ``rate`` in [0, 1), ``mask`` of x's shape, True (or 1) where an element is kept, drawn
    with probability 1 - rate (an array, or a ``masks.KeepMask`` computed here; on a GPU inside the kernel).
    Scaling the kept elements by 1 / (1 - rate) keeps the expectation, ``E[out] = x``, so that an evaluation pass
    (no dropout) needs no rescaling. ``out``: where to write the result (``out=x`` reuses x's memory). Returns out
    (x's shape) and the cache (mask, 1 / (1 - rate)).
    """
    xp = array_module(x)
    if tuple(mask.shape) != x.shape:
        raise ValueError(f"a dropout mask must have the shape of its input {tuple(x.shape)}, got {tuple(mask.shape)}")
    scale = 1.0 / (1.0 - rate)
    if xp is not np:  # a GPU: one fused kernel, which computes a KeepMask's bits itself (none kept in memory)
        return _into(out, x, _dropped(x, mask, x.dtype.type(scale))), (mask, scale)
    mask = as_array(mask, xp)  # a KeepMask computed here, on x's device
    out = xp.empty(x.shape, x.dtype) if out is None else _checked_out(out, x)
    for_row_blocks(partial(_masked_scale_block, scale=scale), rows(x), rows(mask), rows(out))
    return out, (mask, scale)


def dropout_backward(dout: Array, cache: tuple, out: Array | None = None) -> Array:
    """The forward is linear in x with the diagonal map mask / (1 - rate), so dx = dout * mask / (1 - rate): the
    gradient reaches only the kept elements, scaled as they were. ``out=dout`` reuses dout's memory."""
    mask, scale = cache
    xp = array_module(dout)
    if xp is not np:
        return _into(out, dout, _dropped(dout, mask, dout.dtype.type(scale)))
    dx = xp.empty(dout.shape, dout.dtype) if out is None else _checked_out(out, dout)
    for_row_blocks(partial(_masked_scale_block, scale=scale), rows(dout), rows(mask), rows(dx))
    return dx


def _masked_scale_block(x: Array, mask: Array, out: Array, scale: float) -> None:
    xp = array_module(x)
    xp.multiply(x, mask, out=out)  # x where kept, 0 where dropped (out may be x)
    out *= scale  # the block is still in the CPU cache: the two steps cost about one pass through memory


@fused
def _masked_scale_fused(xp: Any, x: Array, mask: Array, scale: Any) -> Array:
    """x * mask * scale in one kernel (the device's dropout, forward and backward, with a mask given as an array)."""
    return x * mask * scale


@fused
def _hashed_scale_fused(xp: Any, x: Array, image: Array, position: Array, n: Any, k1: Any, k2: Any, threshold: Any,
                        scale: Any) -> Array:
    """x * keep * scale with a KeepMask's bits computed in the same kernel (``masks.kept``)."""
    return x * kept(image, position, n, k1, k2, threshold) * scale


@fused
def _hashed_scale_add_fused(xp: Any, x: Array, image: Array, position: Array, n: Any, k1: Any, k2: Any,
                            threshold: Any, scale: Any, residual: Array) -> Array:
    """residual + x * keep * scale, the KeepMask's bits computed in the kernel (stochastic depth's residual sum)."""
    return residual + x * kept(image, position, n, k1, k2, threshold) * scale


def _dropped(x: Array, mask: Any, scale: Any, residual: Array | None = None) -> Array:
    """On a GPU: (residual +) x * mask * scale in one kernel, the mask (x's leading axes) an array or a KeepMask
    whose bits the kernel computes from its rule: no mask made, stored or read from memory."""
    if isinstance(mask, KeepMask):
        rule = mask.rule(array_module(x), x.ndim)
        if residual is None:
            return _hashed_scale_fused(x, *rule, scale)
        return _hashed_scale_add_fused(x, *rule, scale, residual)
    if mask.ndim < x.ndim:  # stochastic depth's (B,): (B, 1, ..., 1)
        mask = mask.reshape(*mask.shape, *(1,) * (x.ndim - mask.ndim))
    return _masked_scale_fused(x, mask, scale) if residual is None else _masked_scale_add_fused(x, mask, scale,
                                                                                                residual)


def stochastic_depth_forward(x: Array, rate: float, mask: Array, out: Array | None = None,
                             residual: Array | None = None) -> tuple[Array, tuple]:
    """Stochastic depth of a residual branch: each example's whole branch output is kept or dropped,

        out[b] = x[b] * mask[b] / (1 - rate)          (the residual sum  u = x_in + out  then skips the branch)

    Inputs: x (B, ...) the branch's output, ``rate`` in [0, 1), ``mask`` (B,) True (or 1) where example b keeps its
    branch, broadcast over the other axes; inverted scaling as in dropout, so ``E[out] = x``. ``out``: where to
    write the result (``out=x`` reuses x's memory). ``residual`` (x's shape): when given, it is added, so that
    ``out = residual + x * mask / (1 - rate)`` is the residual sum itself (on a GPU one fused kernel, where the
    product and the sum were two). Returns out and the cache (the mask shaped (B, 1, ..., 1) in x's dtype, and
    1 / (1 - rate); on a GPU the mask as given: a KeepMask's bits are computed again by the backward's kernel).
    """
    xp = array_module(x)
    if tuple(mask.shape) != x.shape[:1]:
        raise ValueError(f"a stochastic-depth mask has one entry per example, shape ({x.shape[0]},); got "
                         f"{tuple(mask.shape)}")
    scale = x.dtype.type(1.0 / (1.0 - rate))
    if xp is not np:  # a GPU: the mask's bits, the product and the residual sum in one fused kernel
        return _into(out, x, _dropped(x, mask, scale, residual)), (mask, scale)
    kept = as_array(mask, xp).astype(x.dtype).reshape(-1, *(1,) * (x.ndim - 1))  # (B, 1, ..., 1): 0 or 1
    if residual is not None and out is not None and np.may_share_memory(out, residual):
        out[...] = x * (kept * scale) + residual  # out would overwrite the residual before it is added
        return out, (kept, scale)
    out = xp.multiply(x, kept * scale, out=out)  # (B, ...): x where kept (scaled), 0 where dropped
    if residual is not None:
        out += residual
    return out, (kept, scale)


def stochastic_depth_backward(dout: Array, cache: tuple) -> Array:
    """dx[b] = dout[b] * mask[b] / (1 - rate): a dropped example's branch gets no gradient (a ``residual`` of the
    forward gets dout unchanged: the caller adds that path). A new array: the caller still needs dout for the
    residual path. Returns dx (dout's shape)."""
    kept, scale = cache  # on a GPU: the mask as given, (B,) or a KeepMask
    if array_module(dout) is not np:
        return _dropped(dout, kept, scale)
    return dout * (kept * scale)  # (B, ...)


@fused
def _masked_scale_add_fused(xp: Any, x: Array, mask: Array, scale: Any, residual: Array) -> Array:
    """residual + x * mask * scale in one kernel (the device's stochastic depth with its residual sum)."""
    return residual + x * mask * scale


# ----------------------------------------------------------------------------------------------------------------
# LayerNorm over the last (channel) axis

LAYER_NORM_EPS = 1e-6  # the official Mixer's (Flax's default)


def layer_norm_forward(x: Array, scale: Array, bias: Array, eps: float = LAYER_NORM_EPS, train: bool = True
                       ) -> tuple[Array, tuple | None]:
    """``out = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias``, statistics over the last axis.

    Inputs: x (..., C), scale (C,), bias (C,).  Returns out (..., C) and the cache (xhat, rstd, scale) where
    ``xhat`` is the normalised input and ``rstd = 1 / sqrt(var + eps)`` (..., 1); with ``train=False`` no cache
    (None) and xhat is never stored (normalised in out's memory). The means over the C channels are
    matrix-vector products with a vector of 1/C (one BLAS call each, faster than a NumPy reduction).
    """
    xp = array_module(x)
    if xp is not np:  # a GPU: the means as matrix-vector products, the elementwise steps as fused kernels
        mean_weights = constant_vector(xp, x.shape[-1], 1.0 / x.shape[-1], x.dtype, column=True)  # (C, 1)
        return _layer_norm_forward_on_device(x, scale, bias, eps, train, mean_weights)
    mean_weights = constant_vector(xp, x.shape[-1], 1.0 / x.shape[-1], x.dtype)
    out = xp.empty(x.shape, x.dtype)
    xhat = xp.empty(x.shape, x.dtype) if train else out
    rstd = xp.empty((*x.shape[:-1], 1), x.dtype)
    for_row_blocks(partial(_layer_norm_forward_block, scale=scale, bias=bias, eps=eps, mean_weights=mean_weights),
                   rows(x), rows(xhat), rows(rstd), rows(out))
    return out, ((xhat, rstd, scale) if train else None)


def _layer_norm_forward_block(x: Array, xhat: Array, rstd: Array, out: Array, scale: Array, bias: Array,
                              eps: float, mean_weights: Array) -> None:
    xp = array_module(x)
    mean = x @ mean_weights  # (rows,)
    xp.subtract(x, mean[:, None], out=xhat)  # x - mean
    squares = scratch("layer_norm", x)
    xp.multiply(xhat, xhat, out=squares)
    var = squares @ mean_weights  # (rows,), biased, as in every LayerNorm
    var += eps
    xp.sqrt(var, out=var)
    xp.divide(1.0, var[:, None], out=rstd)  # 1 / sqrt(var + eps)
    xhat *= rstd
    xp.multiply(xhat, scale, out=out)  # in place when xhat is out (train=False)
    out += bias


@fused
def _centred_squares_fused(xp: Any, x: Array, mean: Array) -> Array:
    return (x - mean) * (x - mean)


@fused
def _reciprocal_std_fused(xp: Any, var: Array, eps: Any) -> Array:
    return 1.0 / xp.sqrt(var + eps)


@fused
def _normalised_fused(xp: Any, x: Array, mean: Array, rstd: Array, scale: Array, bias: Array) -> Array:
    return (x - mean) * rstd * scale + bias


@fused
def _normalised_and_xhat_fused(xp: Any, x: Array, mean: Array, rstd: Array, scale: Array, bias: Array
                               ) -> tuple[Array, Array]:
    xhat = (x - mean) * rstd
    return xhat * scale + bias, xhat  # two outputs of one kernel


def _layer_norm_forward_on_device(x: Array, scale: Array, bias: Array, eps: float, train: bool,
                                  mean_weights: Array) -> tuple[Array, tuple | None]:
    """LayerNorm on CuPy arrays, the same steps as the row-block kernel: 2 matrix-vector products and 3 fused
    kernels (xhat and out written by one), instead of some 10 launches. mean_weights: (C, 1) of 1/C. On 2-D
    views: CuPy multiplies an N-d array by a matrix as a batch of small GEMMs (4 kernels), a 2-D one in one."""
    x2 = rows(x)  # (N, C)
    mean = x2 @ mean_weights  # (N, 1)
    var = _centred_squares_fused(x2, mean) @ mean_weights  # (N, 1), biased
    rstd = _reciprocal_std_fused(var, x.dtype.type(eps))  # (N, 1)
    if not train:  # xhat never stored
        return _normalised_fused(x2, mean, rstd, scale, bias).reshape(x.shape), None
    out, xhat = _normalised_and_xhat_fused(x2, mean, rstd, scale, bias)  # (N, C) each
    return out.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1), scale)


@fused
def _layer_norm_dx_fused(xp: Any, dout: Array, xhat: Array, rstd: Array, scale: Array, sum_d: Array,
                         sum_d_xhat: Array, inv_c: Any) -> Array:
    """dx = rstd (d - mean(d) - xhat mean(d xhat)), d = dout * scale, the means as sums over C times 1/C."""
    return rstd * (dout * scale - (sum_d + xhat * sum_d_xhat) * inv_c)


@fused
def _layer_norm_dx_add_fused(xp: Any, dout: Array, xhat: Array, rstd: Array, scale: Array, sum_d: Array,
                             sum_d_xhat: Array, inv_c: Any, residual: Array) -> Array:
    """``_layer_norm_dx_fused`` plus a residual path's gradient, in the same kernel."""
    return rstd * (dout * scale - (sum_d + xhat * sum_d_xhat) * inv_c) + residual


def _layer_norm_backward_on_device(dout: Array, xhat: Array, rstd: Array, scale: Array, out: Array | None,
                                   residual: Array | None = None) -> tuple[Array, Array, Array]:
    """The backward on CuPy arrays: the two sums over C as matrix-vector products, the two over the rows as
    reductions, dx in one fused kernel."""
    c = xhat.shape[-1]
    dout2, xhat2, rstd2 = rows(dout), rows(xhat), rows(rstd)  # (N, C), (N, C), (N, 1): 2-D GEMMs, as forward
    dout_xhat = dout2 * xhat2  # (N, C)
    scale_column = scale.reshape(c, 1)  # (C, 1)
    sum_d, sum_d_xhat = dout2 @ scale_column, dout_xhat @ scale_column  # (N, 1): C mean(d), C mean(d xhat)
    dscale, dbias = dout_xhat.sum(axis=0), dout2.sum(axis=0)  # (C,)
    inv_c = xhat.dtype.type(1.0 / c)
    if residual is None:
        dx = _layer_norm_dx_fused(dout2, xhat2, rstd2, scale, sum_d, sum_d_xhat, inv_c)
    else:
        dx = _layer_norm_dx_add_fused(dout2, xhat2, rstd2, scale, sum_d, sum_d_xhat, inv_c, rows(residual))
    return _into(out, dout, dx.reshape(xhat.shape)), dscale, dbias


def layer_norm_backward(dout: Array, cache: tuple, out: Array | None = None, residual: Array | None = None
                        ) -> tuple[Array, Array, Array]:
    """Gradients of LayerNorm. With ``d = dout * scale`` and means over the C channels,

        dx = rstd * (d - mean(d) - xhat * mean(d * xhat))

    (the two mean terms are the gradient flowing through the mean and the variance), and
    ``dscale = sum(dout * xhat)``, ``dbias = sum(dout)`` over all leading axes. ``out``: where to write dx
    (``out=dout`` reuses dout's memory). ``residual`` (x's shape, not ``out``'s memory): when given, it is added
    to dx in the same pass -- the gradient of a residual path around the LayerNorm's branch, which a Mixer
    block adds right after (one pass over memory fewer; on a GPU one kernel fewer). Returns dx (..., C),
    dscale (C,), dbias (C,).
    """
    xhat, rstd, scale = cache
    xp = array_module(xhat)
    if residual is not None and out is not None and (residual is out or xp is np and np.may_share_memory(residual,
                                                                                                       out)):
        raise ValueError("layer_norm_backward: residual must not share memory with out (where dx is written)")
    if xp is not np:
        return _layer_norm_backward_on_device(dout, xhat, rstd, scale, out, residual)
    dx = xp.empty(xhat.shape, xhat.dtype) if out is None else _checked_out(out, xhat)
    scale_over_c = scale / xhat.shape[-1]  # mean(d * v) = (dout * v) @ (scale / C)
    blocks = (rows(dout), rows(xhat), rows(rstd), rows(dx)) + (() if residual is None else (rows(residual),))
    partial_sums = for_row_blocks(partial(_layer_norm_backward_block, scale=scale, scale_over_c=scale_over_c),
                                  *blocks)
    dscale = sum(p[0] for p in partial_sums)  # (C,), block by block in a fixed order: deterministic
    dbias = sum(p[1] for p in partial_sums)  # (C,)
    return dx, dscale, dbias


def _layer_norm_backward_block(dout: Array, xhat: Array, rstd: Array, dx: Array, residual: Array | None = None, *,
                               scale: Array, scale_over_c: Array) -> tuple[Array, Array]:
    xp = array_module(dout)
    dout_xhat = scratch("layer_norm", dout)
    xp.multiply(dout, xhat, out=dout_xhat)
    mean_d = dout @ scale_over_c  # (rows,)  mean(d)
    mean_d_xhat = dout_xhat @ scale_over_c  # (rows,)  mean(d * xhat)
    ones = constant_vector(xp, dout.shape[0], 1.0, dout.dtype)
    dscale_part, dbias_part = ones @ dout_xhat, ones @ dout  # row sums as BLAS calls; before the scratch is reused
    xp.multiply(dout, scale, out=dx)  # d (dout's last use: dx may be dout itself)
    dx -= mean_d[:, None]
    xp.multiply(xhat, mean_d_xhat[:, None], out=dout_xhat)
    dx -= dout_xhat
    dx *= rstd
    if residual is not None:  # the residual path's gradient, while the block is in the cache
        dx += residual
    return dscale_part, dbias_part


GROUP_NORM_EPS = 1e-6  # Flax's GroupNorm default, as the Mixer's LayerNorm


# ----------------------------------------------------------------------------------------------------------------
# GroupNorm over (positions, channels of a group); ReLU


def group_norm_forward(x: Array, scale: Array, bias: Array, groups: int, eps: float = GROUP_NORM_EPS,
                       train: bool = True) -> tuple[Array, tuple | None]:
    """Group Normalization (Wu & He 2018): the C channels split into G groups of C/G; each image's group is
    normalised over all its positions and channels, then every channel gets its own scale and bias:

        xhat[b, h, w, c] = (x[b, h, w, c] - mean_bg) / sqrt(var_bg + eps),   g = the group of channel c
        out = xhat * scale + bias

    with mean_bg and var_bg (biased) over the H*W*C/G values of image b's group g. Per image: no batch
    statistics, so training and evaluation compute the same function at any batch size. G = 1 is a LayerNorm
    over (H, W, C); G = C is InstanceNorm. The straightforward NumPy, with xg = x viewed as (B, HW, G, C/G):

        mean = xg.mean(axis=(1, 3), keepdims=True);  var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)

    Computed instead a few images at a time (``chunks.for_row_blocks``: the block's arrays stay in the CPU
    cache between passes, written in place) and with the sums as BLAS calls: the sum over the H*W positions of
    each image's channels is one matrix-vector product with a vector of ones, and a group's sum is the sum of
    its C/G channel sums (NumPy's reduction over axes (1, 3) with short C/G runs was 30% of a cnn-micro step).

    Inputs: x (B, H, W, C), scale (C,), bias (C,), groups G dividing C. Returns out (B, H, W, C) and the cache
    (xhat, rstd (B, 1, G, 1), scale, G), or None when not ``train`` (xhat then never stored: normalised in
    out's memory).
    """
    return _group_norm_forward(x, scale, bias, groups, eps, train, relu=False)


def _group_norm_forward(x: Array, scale: Array, bias: Array, groups: int, eps: float, train: bool, relu: bool
                        ) -> tuple[Array, tuple | None]:
    b, h, w, c = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"GroupNorm needs a number of groups dividing the {c} channels, got {groups}")
    xp = array_module(x)
    out = xp.empty(x.shape, x.dtype)  # (B, H, W, C)
    xhat = xp.empty(x.shape, x.dtype) if train else out  # (B, H, W, C)
    rstd = xp.empty((b, 1, groups, 1), x.dtype)  # (B, 1, G, 1)
    positive = xp.empty(x.shape, bool) if relu else None  # (B, H, W, C): where the ReLU passes
    ones = constant_vector(xp, h * w, 1.0, x.dtype)  # (HW,): ones @ (n, HW, C) sums over positions
    per_image = h * w * c  # explicit: reshape(b, -1) cannot tell the size of an empty batch's rows
    arrays = [x.reshape(b, per_image), xhat.reshape(b, per_image), rstd.reshape(b, groups), out.reshape(b, per_image)]
    for_row_blocks(partial(_group_norm_forward_block, scale=scale, bias=bias, groups=groups, eps=eps, ones=ones),
                   *arrays, *([positive.reshape(b, per_image)] if relu else []))
    cache = (xhat, rstd, scale, groups) if train else None
    return out, (cache if not relu or not train else (cache, positive))


def _group_norm_forward_block(x: Array, xhat: Array, rstd: Array, out: Array, positive: Array | None = None, *,
                              scale: Array, bias: Array, groups: int, eps: float, ones: Array) -> None:
    """One block of n images: x, xhat, out (n, H*W*C) -- rows of whole images -- and rstd (n, G); with ``positive``
    (n, H*W*C) bool, the ReLU too, while the block is in the cache."""
    xp = array_module(x)
    n, (hw,) = x.shape[0], ones.shape
    c = x.shape[1] // hw
    per_group = hw * (c // groups)  # values in one (image, group): H*W*C/G
    x, xhat, out = (a.reshape(n, hw, c) for a in (x, xhat, out))  # (n, HW, C) views
    mean = (ones @ x).reshape(n, groups, -1).sum(axis=2) / per_group  # (n, C) channel sums -> (n, G) means
    xp.subtract(x, xp.repeat(mean, c // groups, axis=1)[:, None, :], out=xhat)  # (n, HW, C): x - mean
    squares = scratch("group_norm", xhat)  # (n, HW, C)
    xp.multiply(xhat, xhat, out=squares)
    var = (ones @ squares).reshape(n, groups, -1).sum(axis=2) / per_group  # (n, G), biased
    xp.divide(1.0, xp.sqrt(var + eps), out=rstd)  # (n, G): 1 / sqrt(var + eps)
    xhat *= xp.repeat(rstd, c // groups, axis=1)[:, None, :]  # (n, HW, C): xhat
    xp.multiply(xhat, scale, out=out)  # in place when xhat is out (not train)
    out += bias
    if positive is not None:  # ReLU: out * (out > 0), as relu_forward
        positive = positive.reshape(n, hw, c)
        xp.greater(out, 0, out=positive)
        out *= positive


def group_norm_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of GroupNorm: LayerNorm's formula with the means taken over a group. With ``d = dout * scale``,

        dx = rstd * (d - mean_g(d) - xhat * mean_g(d * xhat))

    (means over each image's group: its positions and channels; the two mean terms are the gradient through the
    mean and the variance), ``dscale = sum(dout * xhat)`` and ``dbias = sum(dout)`` over (B, H, W).
    Computed as the forward, in blocks of images with BLAS sums, from two per-image channel sums (n, C): over the
    positions, S1 = sum(dout) and S2 = sum(dout * xhat). Then dbias and dscale are their sums over the images,
    mean_g(d) = sum over the group's channels of scale * S1 / (H*W*C/G), likewise mean_g(d * xhat) from S2, and
    dx = dout * (rstd scale) - rstd mean_g(d) - xhat * (rstd mean_g(d * xhat)): per-channel factors, in place.
    Inputs: dout (B, H, W, C). Returns dx (B, H, W, C), dscale (C,), dbias (C,).
    """
    return _group_norm_backward(dout, cache, None)


def _group_norm_backward(dout: Array, cache: tuple, positive: Array | None) -> tuple[Array, Array, Array]:
    xhat, rstd, scale, groups = cache
    b, h, w, c = xhat.shape
    xp = array_module(xhat)
    dx = xp.empty(xhat.shape, xhat.dtype)  # (B, H, W, C)
    ones = constant_vector(xp, h * w, 1.0, xhat.dtype)  # (HW,)
    per_image = h * w * c  # explicit, as in the forward (an empty batch)
    arrays = [dout.reshape(b, per_image), xhat.reshape(b, per_image), rstd.reshape(b, groups), dx.reshape(b, per_image)]
    partial_sums = for_row_blocks(partial(_group_norm_backward_block, scale=scale, groups=groups, ones=ones),
                                  *arrays, *([positive.reshape(b, per_image)] if positive is not None else []))
    dscale = sum(p[0] for p in partial_sums)  # (C,), block by block in a fixed order: deterministic
    dbias = sum(p[1] for p in partial_sums)  # (C,)
    return dx, dscale, dbias


def group_norm_relu_forward(x: Array, scale: Array, bias: Array, groups: int, eps: float = GROUP_NORM_EPS,
                            train: bool = True) -> tuple[Array, tuple | None]:
    """``ReLU(GroupNorm(x))``, the CNN's pre-activation: the same numbers as ``group_norm_forward`` then
    ``relu_forward``, with the ReLU applied to each block of images while it is still in the CPU cache (one pass
    over memory instead of two; on a GPU the two layers as they are). Returns out and the cache (GroupNorm's, and
    where the ReLU passed), or None when not ``train``."""
    if not isinstance(x, np.ndarray):
        out, norm = group_norm_forward(x, scale, bias, groups, eps, train)
        out, relu = relu_forward(out)
        return out, ((norm, relu[0]) if train else None)
    return _group_norm_forward(x, scale, bias, groups, eps, train, relu=True)


def group_norm_relu_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """Gradients of ``group_norm_relu_forward``: the ReLU's (dout where it passed, else 0), then GroupNorm's, in
    one pass over each block of images. Returns dx, dscale, dbias."""
    norm, positive = cache
    if not isinstance(dout, np.ndarray):
        return group_norm_backward(relu_backward(dout, (positive,)), norm)
    return _group_norm_backward(dout, norm, positive)


def _group_norm_backward_block(dout: Array, xhat: Array, rstd: Array, dx: Array, positive: Array | None = None, *,
                               scale: Array, groups: int, ones: Array) -> tuple[Array, Array]:
    """One block of n images: dout, xhat, dx (n, H*W*C), rstd (n, G); with ``positive`` (n, H*W*C) the ReLU's
    backward first, dout * positive, into dx's memory while the block is in the cache. Returns its parts of dscale,
    dbias (C,)."""
    xp = array_module(dout)
    n, (hw,) = dout.shape[0], ones.shape
    c = dout.shape[1] // hw
    per_group = hw * (c // groups)
    if positive is not None:  # the ReLU's backward: dL/d(its input) = dout where it was positive, else 0
        dout = xp.multiply(dout, positive, out=dx)  # dx is written below only after dout's last read
    dout, xhat, dx = (a.reshape(n, hw, c) for a in (dout, xhat, dx))  # (n, HW, C) views
    dout_xhat = scratch("group_norm", dout)  # (n, HW, C)
    xp.multiply(dout, xhat, out=dout_xhat)
    s1, s2 = ones @ dout, ones @ dout_xhat  # (n, C): sums over positions of dout and of dout * xhat
    mean_d = (s1 * scale).reshape(n, groups, -1).sum(axis=2) / per_group  # (n, G): mean_g(d)
    mean_d_xhat = (s2 * scale).reshape(n, groups, -1).sum(axis=2) / per_group  # (n, G): mean_g(d * xhat)
    rstd_c = xp.repeat(rstd, c // groups, axis=1)  # (n, C): each channel its group's rstd
    xp.multiply(dout, (rstd_c * scale)[:, None, :], out=dx)  # (n, HW, C): rstd * d
    dx -= (rstd_c * xp.repeat(mean_d, c // groups, axis=1))[:, None, :]  # - rstd * mean_g(d)
    xp.multiply(xhat, (rstd_c * xp.repeat(mean_d_xhat, c // groups, axis=1))[:, None, :], out=dout_xhat)
    dx -= dout_xhat  # - rstd * xhat * mean_g(d * xhat)
    return s2.sum(axis=0), s1.sum(axis=0)  # (C,) parts of dscale, dbias


def relu_forward(x: Array) -> tuple[Array, tuple]:
    """``out = max(x, 0)``. Returns out (x's shape) and the cache: where x > 0 (booleans, a quarter of x's bytes)."""
    positive = x > 0
    return x * positive, (positive,)


def relu_backward(dout: Array, cache: tuple) -> Array:
    """dx = dout where x > 0, else 0 (the kink at 0 gets 0, as every library does)."""
    (positive,) = cache
    return dout * positive


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
