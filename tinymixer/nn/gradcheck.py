"""Finite-difference gradient checks: the proof that a hand-written backward is right.

The idea: for a function ``out = f(x)`` and any fixed array ``dout``, the scalar ``L = sum(f(x) * dout)`` has
``dL/dx = backward(dout)``. Central differences estimate that derivative one element at a time,

    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h,            error O(h^2)

and in float64 with h ~ 1e-5 the estimate agrees with a correct backward to ~1e-8 or better in relative terms,
while a wrong backward (a missing term, a transposed matrix, the derivative of the wrong formula) is off by
O(1). Use float64 inputs: in float32 the round-off of L swamps the difference quotient.

Used by the tests and the lessons alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..backend import array_module, to_host

Array = Any


def rel_error(a: Array, b: Array, floor: float = 1e-8) -> float:
    """Largest elementwise relative error ``|a - b| / max(floor, |a| + |b|)``.

    Identical arrays give 0; float64 gradient checks of smooth functions land around 1e-8..1e-11; a wrong
    gradient gives something of order 1e-2..1. The ``floor`` keeps elements whose gradient is ~0 from dividing
    round-off by ~0.
    """
    a, b = to_host(a).astype(np.float64), to_host(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(floor, np.abs(a) + np.abs(b))))


def numerical_gradient(
    f: Callable[[], Array], x: Array, dout: Array | None = None, h: float | None = None, order: int = 4,
    allow_float32: bool = False,
) -> np.ndarray:
    """Central-difference gradient of ``sum(f() * dout)`` with respect to every element of ``x``.

    ``f`` takes no arguments and reads ``x`` itself (a closure or the model's own params): each element of ``x``
    is nudged in place by +h and -h, and restored. ``dout`` defaults to all ones (gradient of ``sum(f())``).
    Returns an array of x's shape, on the host.

    ``order=2`` (h = 1e-5) is the textbook two-point difference above. Its absolute accuracy is limited to
    ~1e-11 by round-off in L, so a gradient element of size 1e-6 can only be checked to ~1e-5 relative.
    ``order=4`` (the default, h = 1e-3) uses the four-point stencil

        (-L(x + 2h) + 8 L(x + h) - 8 L(x - h) + L(x - 2h)) / 12h,            error O(h^4)

    whose larger step divides the round-off by 100 while the truncation error stays ~1e-12: it checks even
    the small elements of a whole model's gradient to ~1e-7 relative, for twice the forward passes.
    """
    if order not in (2, 4):
        raise ValueError(f"order must be 2 or 4, got {order}")
    if h is None:
        h = 1e-5 if order == 2 else 1e-3
    if x.dtype != np.float64 and not (allow_float32 and x.dtype == np.float32):
        raise TypeError(f"gradient checks need float64: round-off in {x.dtype} swamps the difference quotient "
                        f"(convert with .astype(np.float64); allow_float32=True shows the errors float32 gives)")
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient perturbs x in place, so x must be C-contiguous")
    flat = x.reshape(-1)  # a view: writing to it writes to x
    grad = np.zeros(x.size)
    for i in range(x.size):
        old = float(flat[i])
        loss_at = {}
        for shift in (h, -h) if order == 2 else (h, -h, 2 * h, -2 * h):
            flat[i] = old + shift
            loss_at[shift] = _contract(f(), dout)
        flat[i] = old
        if order == 2:
            grad[i] = (loss_at[h] - loss_at[-h]) / (2.0 * h)
        else:
            grad[i] = (8.0 * (loss_at[h] - loss_at[-h]) - (loss_at[2 * h] - loss_at[-2 * h])) / (12.0 * h)
    return grad.reshape(x.shape)


def _contract(out: Array, dout: Array | None) -> float:
    if isinstance(out, tuple):  # a layer's forward returns (out, cache)
        out = out[0]
    return float(out.sum()) if dout is None else float((out * dout).sum())


def check_gradients(
    forward: Callable[..., Any],
    backward: Callable[[Array, Any], Any],
    inputs: Mapping[str, Array | Mapping[str, Array]],
    h: float | None = None,
    order: int = 4,
    seed: int = 0,
    allow_float32: bool = False,
) -> dict[str, float]:
    """Check a forward/backward pair against finite differences; return the relative error per input.

    ``forward(**inputs) -> (out, cache)``; ``backward(dout, cache)`` returns the gradients in the order of
    ``inputs``: one array, a tuple of arrays, or a tuple whose entries are dicts for inputs that are dicts of
    parameters (as the blocks take). Every floating-point array in ``inputs`` is checked (integer inputs, e.g.
    labels, are not); the result maps each one's name (``"x"``, ``"w"``, or ``"params/Dense_0/kernel"`` for a dict
    entry) to its relative error. ``h`` and ``order`` are those of ``numerical_gradient``.

    A float32 input is refused with a TypeError (its round-off swamps the differences, so a correct backward
    would look wrong), unless ``allow_float32``, which checks it anyway to show how large those errors are. A check
    that would check nothing is a ValueError: it never passes silently.

    Example::

        errors = check_gradients(dense_forward, dense_backward, {"x": x, "w": w, "b": b})
        assert max(errors.values()) < 1e-8
    """
    out, cache = forward(**inputs)
    xp = array_module(out)
    dout = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))  # random upstream gradient
    analytic = backward(dout, cache)
    if not isinstance(analytic, tuple):
        analytic = (analytic,)
    if len(analytic) != len(inputs):
        raise ValueError(f"backward returned {len(analytic)} gradients for {len(inputs)} inputs")

    def f() -> Array:
        return forward(**inputs)[0]

    errors = {}
    for (name, value), grad in zip(inputs.items(), analytic, strict=True):
        if isinstance(value, Mapping):
            for key, array in value.items():
                errors[f"{name}/{key}"] = rel_error(grad[key], numerical_gradient(f, array, dout, h, order,
                                                                                  allow_float32))
        elif getattr(getattr(value, "dtype", None), "kind", None) == "f":  # float32 too: refused, or checked
            errors[name] = rel_error(grad, numerical_gradient(f, value, dout, h, order, allow_float32))
    if not errors:
        raise ValueError(f"nothing to check: none of the inputs {list(inputs)} is a floating-point array")
    return errors


def directional_check(
    loss: Callable[[], Array],
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    h: float = 1e-3,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Check all gradients at once along one random unit direction ``v`` over every parameter:

        dL/dv ~ (-L(t + 2h v) + 8 L(t + h v) - 8 L(t - h v) + L(t - 2h v)) / 12h   vs   sum over parameters of grad . v

    (``t`` the parameters; the four-point stencil of ``numerical_gradient(order=4)``). Four forward passes instead
    of four per parameter, so it scales to a realistic model. ``v`` has unit length over all parameters together,
    so ``h`` is the real length of the step. ``loss()`` reads ``params``, which are perturbed in place and
    restored exactly. Returns (numerical, analytic, relative error).
    """
    rng = np.random.default_rng(seed)
    xp = array_module(*params.values())
    direction = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    length = np.sqrt(sum(float(np.vdot(v, v)) for v in direction.values()))
    direction = {k: xp.asarray(v / length) for k, v in direction.items()}
    analytic = float(sum(float((to_host(grads[k]) * to_host(v)).sum()) for k, v in direction.items()))
    originals = {k: p.copy() for k, p in params.items()}

    def loss_at(step: float) -> float:
        for k, v in direction.items():
            params[k][...] = originals[k] + step * v
        return float(loss())

    try:
        numerical = (8.0 * (loss_at(h) - loss_at(-h)) - (loss_at(2 * h) - loss_at(-2 * h))) / (12.0 * h)
    finally:
        for k, original in originals.items():  # restore exactly (p + hv - hv need not round back to p)
            params[k][...] = original
    return numerical, analytic, abs(numerical - analytic) / max(1e-30, abs(numerical) + abs(analytic))
