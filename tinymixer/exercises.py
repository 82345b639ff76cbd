"""Exercises a learner can check: write a layer's forward or backward (or an optimiser's rule) and see at once
whether it is right, as CS231n's assignments do.

    from tinymixer import exercises
    exercises.names()                          # what there is to write, lesson by lesson
    print(exercises.task("dense_backward"))    # what your function receives and must return
    def my_dense_backward(dout, cache): ...
    print(exercises.check("dense_backward", my_dense_backward))

``check`` runs your function and the reference (``exercises.reference(name)``: a function of
``tinymixer.nn.reference`` or of the library) on the same random float64 inputs of several shapes, and for a
backward also compares with finite differences of the forward (``nn.gradcheck``), so a check does not rest on
the reference alone. The result has ``.passed`` and a readable ``str()``: which output is wrong, by how much and
where, and a hint when your numbers are those of a classic mistake (each exercise knows several: computed here
from the same inputs and compared with yours). A function that raises ``NotImplementedError`` is "not
implemented yet".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .nn import reference as ref
from .nn.gradcheck import numerical_gradient
from .training.optim import SGD, warmup_cosine

PASS_TOLERANCE = 1e-8  # largest difference from the reference, relative to its largest value: float64 round-off
MISTAKE_TOLERANCE = 1e-6  # yours equal to a known mistake's numbers to this: that mistake


@dataclass(frozen=True)
class Case:
    """One set of inputs: ``args`` for the function, ``label`` to name it, and (for a backward) ``numerical``:
    finite differences of the forward, giving the expected gradients by name."""
    args: tuple
    label: str
    numerical: Callable[[], dict[str, np.ndarray]] | None = None


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer: ``outputs(*args)`` computes its numbers from the same inputs as the exercise."""
    name: str
    hint: str
    outputs: Callable[..., Any]


@dataclass(frozen=True)
class Exercise:
    name: str
    lesson: int
    task: str
    reference: Callable[..., Any]
    outputs: tuple[str, ...]  # names of what the function returns, in order
    cases: Callable[[np.random.Generator], list[Case]]
    mistakes: tuple[Mistake, ...] = ()
    hints: dict[str, str] = field(default_factory=dict)  # per output (or "error", "nonfinite"): when no mistake fits
    forward_only: bool = False  # a forward returning (out, cache): only out is checked
    wrap: Callable[[Callable], Callable] | None = None  # how the check calls both functions (a schedule: every step)


@dataclass
class CheckResult:
    """What ``check`` found: ``passed``, ``status`` ("passed", "wrong", "error", "not implemented"), the
    ``details`` lines, the ``mistake`` recognised (its name, or None) and the ``hint``."""
    name: str
    passed: bool
    status: str
    details: list[str]
    mistake: str | None = None
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = {"passed": "passed", "wrong": "not right yet", "error": "raised an error",
                "not implemented": "not implemented yet"}[self.status]
        lines = [f"{self.name}: {head}", *(f"  {line}" for line in self.details)]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    __repr__ = __str__


# ================================================================================================================
# Comparing outputs


def _named(value: Any, names: Sequence[str]) -> dict[str, Any]:
    """The function's result as {name: array}: a tuple is matched to ``names``; a dict inside is flattened
    ("grads['Dense_0/kernel']")."""
    if value is None:
        raise _Unexpected("returned None: is its `return` missing?")
    several = isinstance(value, tuple) or (isinstance(value, list) and len(names) > 1)
    values = tuple(value) if several else (value,)
    if len(values) != len(names):
        raise _Unexpected(f"returned {len(values)} value{'s' * (len(values) != 1)}, expected {len(names)}: "
                          f"{', '.join(names)}")
    out: dict[str, Any] = {}
    for name, v in zip(names, values, strict=True):
        if v is None:
            raise _Unexpected(f"returned None for {name}: is it computed and returned?")
        if isinstance(v, dict):
            out.update({f"{name}[{k!r}]": v[k] for k in v})
        else:
            out[name] = v
    return out


class _Unexpected(Exception):
    """The learner's result has the wrong form (not an error of theirs in the numbers)."""


def _difference(got: Any, want: Any) -> tuple[float, str]:
    """(relative difference, a description of where) between a learner's output and the expected one."""
    want = np.asarray(want, dtype=np.float64)
    if np.iscomplexobj(got):
        return math.inf, "is complex: the answer is real"
    precision = getattr(got, "dtype", None)
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return math.inf, f"is not an array of numbers ({type(got).__name__})"
    if precision in (np.float32, np.float16) and got.shape == want.shape and np.all(np.isfinite(got)):
        diff = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-300)
        if diff > PASS_TOLERANCE:  # float32's round-off alone is above the tolerance: say so, not "wrong"
            return diff, (f"is {precision} (the inputs are float64): its round-off alone is ~1e-7, above the "
                          f"check's {PASS_TOLERANCE:g}; compute in float64 (relative difference {diff:.2g})")
    if got.shape != want.shape:
        return math.inf, f"has shape {got.shape}, expected {want.shape}"
    if not np.all(np.isfinite(got)):
        return math.inf, "contains nan or inf"
    if got.size == 0:
        return 0.0, ""
    diff = np.abs(got - want)
    scale = max(float(np.abs(want).max()), 1e-300)
    where = np.unravel_index(int(diff.argmax()), diff.shape) if diff.ndim else ()
    index = f" at [{', '.join(map(str, where))}]" if where else ""
    return float(diff.max()) / scale, (f"is off by {float(diff.max()):.3g}{index} (largest difference; relative "
                                       f"to the largest value, {float(diff.max()) / scale:.2g})")


def _copied(args: tuple) -> tuple:
    """Fresh copies of the arguments (arrays, dicts of arrays, tuples of them), so that a function writing into
    its inputs cannot change what the reference sees."""
    def copy(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            return a.copy()
        if isinstance(a, dict):
            return {k: copy(v) for k, v in a.items()}
        if isinstance(a, tuple):
            return tuple(copy(v) for v in a)
        return a
    return tuple(copy(a) for a in args)


def _result(exercise: Exercise, fn: Callable[..., Any], args: tuple) -> dict[str, Any]:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a nan or inf is reported, with a hint
        out = (exercise.wrap(fn) if exercise.wrap else fn)(*_copied(args))
    if exercise.forward_only:
        out = out[0] if isinstance(out, tuple) else out  # (out, cache) or out alone: only out is checked
    return _named(out, exercise.outputs)


def check(name: str, fn: Callable[..., Any], seed: int = 0) -> CheckResult:
    """Run ``fn`` against the reference of exercise ``name`` on random inputs of several shapes (and, for a
    backward, against finite differences); return a ``CheckResult`` (``print`` it)."""
    exercise = _exercise(name)
    cases = exercise.cases(np.random.default_rng(seed))
    worst, fd_worst = 0.0, None
    for number, case in enumerate(cases, 1):
        where = f"case {number} of {len(cases)} ({case.label})"
        try:
            got = _result(exercise, fn, case.args)
        except NotImplementedError:
            return CheckResult(name, False, "not implemented",
                               ["your function raised NotImplementedError: write it, then check again"])
        except _Unexpected as e:
            return CheckResult(name, False, "wrong", [f"{where}: your function {e}"])
        except Exception as e:  # noqa: BLE001 -- a learner's function may raise anything: report it
            return CheckResult(name, False, "error", [f"{where}: {type(e).__name__}: {e}"],
                               hint=exercise.hints.get("error"))
        want = _result(exercise, exercise.reference, case.args)
        if set(got) != set(want):
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            return CheckResult(name, False, "wrong", [f"{where}: expected the entries {', '.join(want)}"
                                                      + (f"; missing {', '.join(missing)}" if missing else "")
                                                      + (f"; unexpected {', '.join(extra)}" if extra else "")])
        diffs = {k: _difference(got[k], want[k]) for k in want}
        wrong = [k for k, (d, _) in diffs.items() if d > PASS_TOLERANCE]
        if wrong:
            return _diagnose(exercise, case, where, got, diffs, wrong)
        worst = max([worst, *(d for d, _ in diffs.values())])
        if case.numerical is not None and fd_worst is None:  # the first case with a backward: its differences
            numerical = case.numerical()
            fd_worst = max(_difference(got[k], v)[0] for k, v in numerical.items())
            if fd_worst > 1e-6:  # equal to the reference but not to the differences: the reference is wrong
                return CheckResult(name, False, "wrong", [f"{where}: equal to the reference, yet finite differences "
                                                          f"disagree ({fd_worst:.1e}): report this as a bug"])
    details = [f"equal to the reference on {len(cases)} random cases ({'; '.join(c.label for c in cases)}): "
               f"largest difference {worst:.1e}"]
    if fd_worst is not None:
        details.append(f"and to finite differences of the forward: {fd_worst:.1e}")
    return CheckResult(name, True, "passed", details)


def _diagnose(exercise: Exercise, case: Case, where: str, got: dict, diffs: dict, wrong: list[str]) -> CheckResult:
    right = [k for k in diffs if k not in wrong]
    details = [f"{where}: {k} {diffs[k][1]}" for k in wrong]
    if right:
        details.append(f"{', '.join(right)} {'is' if len(right) == 1 else 'are'} right")
    if case.numerical is not None and all(np.shape(got[k]) == np.shape(v) for k, v in case.numerical().items()):
        fd = {k: _difference(got[k], v)[0] for k, v in case.numerical().items()}
        differing = [k for k in wrong if fd.get(k, 0.0) > 1e-6]
        if differing:
            details.append("finite differences of the forward (a second witness) differ from yours too: "
                           + ", ".join(f"{k} by {fd[k]:.2g}" for k in differing))
    for mistake in exercise.mistakes:
        try:
            theirs = _named(mistake.outputs(*_copied(case.args)), exercise.outputs)
        except Exception:  # noqa: BLE001 -- a mistake that cannot be formed for these shapes is not this one
            continue
        if set(theirs) == set(got) and all(_difference(got[k], theirs[k])[0] <= MISTAKE_TOLERANCE for k in got):
            return CheckResult(exercise.name, False, "wrong", details, mistake=mistake.name,
                               hint=f"it looks like {mistake.name}: {mistake.hint}")
    if any("nan or inf" in diffs[k][1] for k in wrong) and "nonfinite" in exercise.hints:
        return CheckResult(exercise.name, False, "wrong", details, hint=exercise.hints["nonfinite"])
    hint = next((exercise.hints[k] for k in wrong if k in exercise.hints), None)
    return CheckResult(exercise.name, False, "wrong", details, hint=hint)


# ================================================================================================================
# The exercises

_EXERCISES: dict[str, Exercise] = {}


def _register(exercise: Exercise) -> None:
    _EXERCISES[exercise.name] = exercise


def _exercise(name: str) -> Exercise:
    if name not in _EXERCISES:
        raise KeyError(f"no exercise named {name!r}; the exercises are: {', '.join(_EXERCISES)}")
    return _EXERCISES[name]


def names() -> list[str]:
    """Every exercise's name, in the order of the lessons."""
    return sorted(_EXERCISES, key=lambda n: _EXERCISES[n].lesson)


def reference(name: str) -> Callable[..., Any]:
    """The reference function of exercise ``name`` (read it with ``inspect.getsource`` once yours passes)."""
    return _exercise(name).reference


def task(name: str) -> str:
    """What your function for exercise ``name`` receives and must return."""
    e = _exercise(name)
    return textwrap.fill(f"{e.name} (lesson {e.lesson}): {e.task}", width=110, subsequent_indent="  ")


def _numerical(forward: Callable[..., Any], inputs: dict[str, np.ndarray], dout: Any, **names: str
               ) -> Callable[[], dict[str, np.ndarray]]:
    """Finite differences of ``forward(**inputs)[0]`` contracted with dout, for the inputs named in ``names``
    (output name -> input name); dict inputs are entered as ``"input/key"``."""
    def compute() -> dict[str, np.ndarray]:
        out = {}
        for output, path in names.items():
            held = {k: (dict(v) if isinstance(v, dict) else v.copy()) for k, v in inputs.items()}
            key, _, sub = path.partition("/")
            array = held[key][sub] if sub else held[key]
            if sub:
                held[key][sub] = array = array.copy()
            out[output] = numerical_gradient(lambda held=held: forward(**held)[0], array, dout)
        return out
    return compute


# -- lesson 2: the dense layer's backward -------------------------------------------------------------------------


def _dense_cases(r: np.random.Generator) -> list[Case]:
    cases = []
    for n, d_in, d_out in ((4, 4, 4), (5, 3, 2), (1, 6, 3)):  # square first: a transposed w still multiplies
        x, w, b = r.standard_normal((n, d_in)), r.standard_normal((d_in, d_out)), r.standard_normal(d_out)
        out, cache = ref.dense_forward(x, w, b)
        dout = r.standard_normal(out.shape)
        cases.append(Case((dout, cache), f"N={n}, D_in={d_in}, D_out={d_out}",
                          _numerical(ref.dense_forward, {"x": x, "w": w, "b": b}, dout, dx="x", dw="w", db="b")))
    return cases


def _dense_with(dx: Callable | None = None, dw: Callable | None = None, db: Callable | None = None) -> Callable:
    """The dense backward with some of its three gradients replaced (each a function of dout, x, w)."""
    def outputs(dout: np.ndarray, cache: tuple) -> tuple:
        x, w = cache
        return (dout @ w.T if dx is None else dx(dout, x, w), x.T @ dout if dw is None else dw(dout, x, w),
                dout.sum(axis=0) if db is None else db(dout, x, w))
    return outputs


_DENSE_MISTAKES = (
    Mistake("a transposed weight in dx (dout @ w)", "dx = dout @ w.T: w maps D_in to D_out, so the gradient goes "
            "back through its transpose (check: dx must have x's shape (N, D_in))",
            _dense_with(dx=lambda dout, x, w: dout @ w)),
    Mistake("dW transposed (dout.T @ x)", "dW = x.T @ dout, shaped like w (D_in, D_out)",
            _dense_with(dw=lambda dout, x, w: dout.T @ x)),
    Mistake("the bias gradient averaged over the rows", "b is added to every row, so db is the SUM of dout over "
            "the rows (dout.sum(axis=0)), not the mean", _dense_with(db=lambda dout, x, w: dout.mean(axis=0))),
    Mistake("the bias gradient not summed over the rows", "db must have b's shape (D_out,): sum dout over the rows",
            _dense_with(db=lambda dout, x, w: dout)),
)


_register(Exercise(
    "dense_backward", 2,
    "def dense_backward(dout, cache) -> (dx, dw, db), for out = x @ w + b with x (N, D_in), w (D_in, D_out), "
    "b (D_out,); cache = (x, w); dout (N, D_out). Each gradient has the shape of what it is the gradient of.",
    ref.dense_backward, ("dx", "dw", "db"), _dense_cases, _DENSE_MISTAKES,
    {"error": "a shape error in a matrix product usually means a transposed matrix: dx = dout @ w.T (N, D_in), "
              "dw = x.T @ dout (D_in, D_out)", "db": "db = dout.sum(axis=0)"},
))


# -- lesson 3: GELU's backward (the tanh form) ---------------------------------------------------------------------


def _gelu_cases(r: np.random.Generator) -> list[Case]:
    cases = []
    for shape in ((7,), (3, 4), (2, 3, 5)):
        x = 2.5 * r.standard_normal(shape)
        out, cache = ref.gelu_tanh_forward(x)
        dout = r.standard_normal(shape)
        cases.append(Case((dout, cache), f"x {shape}", _numerical(ref.gelu_tanh_forward, {"x": x}, dout, dx="x")))
    return cases


def _gelu_with(slope: Callable[[np.ndarray, np.ndarray], np.ndarray], times_dout: bool = True) -> Callable:
    return lambda dout, cache: (dout if times_dout else 1.0) * slope(*cache)


def _erf_slope(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return ref.gelu_erf_backward(np.ones_like(x), ref.gelu_erf_forward(x)[1])


def _tanh_slope(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return ref.gelu_tanh_backward(np.ones_like(x), (x, t))


_register(Exercise(
    "gelu_tanh_backward", 3,
    "def gelu_tanh_backward(dout, cache) -> dx, for gelu(x) = x (1 + t) / 2, t = tanh(u), "
    "u = sqrt(2/pi) (x + 0.044715 x^3), elementwise; cache = (x, t); dout shaped like x.",
    ref.gelu_tanh_backward, ("dx",), _gelu_cases, (
        Mistake("the erf GELU's derivative under the tanh forward", "Phi(x) + x phi(x) is the derivative of the "
                "exact GELU, which the tanh curve only approximates (they differ by ~1e-3): differentiate "
                "x (1 + t) / 2 itself", _gelu_with(_erf_slope)),
        Mistake("the product rule without its x g'(x) term", "gelu(x) = x g(x) with g = (1 + t) / 2, so "
                "gelu' = g + x g'(x), and g' = (1 - t^2) u'(x) / 2", _gelu_with(lambda x, t: 0.5 * (1 + t))),
        Mistake("the chain rule without u'(x)", "t = tanh(u(x)), so dt/dx = (1 - t^2) u'(x) with "
                "u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2)",
                _gelu_with(lambda x, t: 0.5 * (1 + t) + 0.5 * x * (1 - t**2))),
        Mistake("gelu'(x) without dout", "the backward returns dL/dx = dout * gelu'(x): multiply by dout",
                _gelu_with(_tanh_slope, times_dout=False)),
    ), {"dx": "dx = dout * gelu'(x), gelu'(x) = (1 + t)/2 + x (1 - t^2) u'(x) / 2"},
))


# -- lesson 4: LayerNorm, forward and backward --------------------------------------------------------------------


def _layer_norm_inputs(r: np.random.Generator, shape: tuple, spread: float) -> tuple:
    c = shape[-1]
    return (1.0 + spread * r.standard_normal(shape), 1 + 0.5 * r.standard_normal(c), r.standard_normal(c))


def _layer_norm_forward_cases(r: np.random.Generator) -> list[Case]:
    # the last case has a spread of 1e-3: var ~ eps there, so where eps goes shows
    return [Case(_layer_norm_inputs(r, shape, spread), f"x {shape}, spread {spread:g}")
            for shape, spread in (((2, 3, 5), 2.0), ((4, 6), 1.0), ((2, 4, 3), 1e-3))]


def _ln_forward_with(mean_axis: int = -1, ddof: int = 0, eps_outside: bool = False, swap: bool = False
                     ) -> Callable:
    def outputs(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=mean_axis, keepdims=True)
        var = x.var(axis=mean_axis, keepdims=True, ddof=ddof)
        std = np.sqrt(var) + ref.LAYER_NORM_EPS if eps_outside else np.sqrt(var + ref.LAYER_NORM_EPS)
        xhat = (x - mu) / std
        return xhat * bias + scale if swap else xhat * scale + bias
    return outputs


_register(Exercise(
    "layer_norm_forward", 4,
    "def layer_norm_forward(x, scale, bias) -> (out, cache) (or out alone; only out is checked): "
    "out = (x - mean) / sqrt(var + eps) * scale + bias, mean and (biased) var over the last axis, eps = 1e-6; "
    "x (..., C), scale and bias (C,).",
    ref.layer_norm_forward, ("out",), _layer_norm_forward_cases, (
        Mistake("the unbiased variance (dividing by C - 1)", "LayerNorm divides by C: np.var's default (ddof=0), "
                "or ((x - mean)**2).mean(axis=-1)", _ln_forward_with(ddof=1)),
        Mistake("eps outside the square root", "1 / sqrt(var + eps): eps keeps the square root away from 0; "
                "added after it, it changes the result where var is small", _ln_forward_with(eps_outside=True)),
        Mistake("statistics over the wrong axis (the tokens, axis -2)", "LayerNorm normalises each token's C "
                "channels: mean and var over axis=-1, keepdims=True", _ln_forward_with(mean_axis=-2)),
        Mistake("scale and bias swapped", "out = xhat * scale + bias", _ln_forward_with(swap=True)),
    ), {"error": "keep the statistics' axis with keepdims=True, so that (..., 1) broadcasts against (..., C)"},
    forward_only=True,
))


def _layer_norm_backward_cases(r: np.random.Generator) -> list[Case]:
    cases = []
    for shape in ((2, 3, 5), (4, 6), (1, 2, 8)):
        x, scale, bias = _layer_norm_inputs(r, shape, 2.0)
        out, cache = ref.layer_norm_forward(x, scale, bias)
        dout = r.standard_normal(shape)
        cases.append(Case((dout, cache), f"x {shape}", _numerical(
            ref.layer_norm_forward, {"x": x, "scale": scale, "bias": bias}, dout, dx="x", dscale="scale",
            dbias="bias")))
    return cases


def _ln_backward_with(mean_term: bool = True, var_term: bool = True, use_scale: bool = True,
                      param_mean: bool = False) -> Callable:
    def outputs(dout: np.ndarray, cache: tuple) -> tuple:
        xc, r, xhat, scale = cache
        d = dout * scale if use_scale else dout
        dx = d.copy()
        if mean_term:
            dx = dx - d.mean(axis=-1, keepdims=True)
        if var_term:
            dx = dx - xhat * (d * xhat).mean(axis=-1, keepdims=True)
        lead = tuple(range(dout.ndim - 1))
        reduce = np.mean if param_mean else np.sum
        return r * dx, reduce(dout * xhat, axis=lead), reduce(dout, axis=lead)
    return outputs


_register(Exercise(
    "layer_norm_backward", 4,
    "def layer_norm_backward(dout, cache) -> (dx, dscale, dbias) for reference.layer_norm_forward; cache = "
    "(xc, r, xhat, scale): xc = x - mean (..., C), r = 1 / sqrt(var + eps) (..., 1), xhat = xc * r, scale (C,). "
    "x reaches the loss three ways: directly, through the mean, and through the variance.",
    ref.layer_norm_backward, ("dx", "dscale", "dbias"), _layer_norm_backward_cases, (
        Mistake("LayerNorm without its variance term", "the variance depends on x too: with d = dout * scale, "
                "dx = r (d - mean(d) - xhat * mean(d * xhat)); the last term is the path through the variance",
                _ln_backward_with(var_term=False)),
        Mistake("LayerNorm without its mean term", "the mean depends on x: its path adds -mean(d) to d (and "
                "xc = x - mean passes dxc on with -1/C to every element)", _ln_backward_with(mean_term=False)),
        Mistake("the mean and variance taken as constants (dx = r * d)", "both statistics depend on x: "
                "dx = r (d - mean(d) - xhat * mean(d * xhat))", _ln_backward_with(False, False)),
        Mistake("dx without the scale", "out = xhat * scale + bias, so dL/dxhat = dout * scale",
                _ln_backward_with(use_scale=False)),
        Mistake("dscale and dbias averaged over the rows", "scale and bias act on every row: their gradients SUM "
                "over all leading axes", _ln_backward_with(param_mean=True)),
    ), {"dscale": "dscale = (dout * xhat) summed over every axis but the last", "dbias": "dbias = dout summed "
        "over every axis but the last", "dx": "undo the forward's steps one by one (reference.layer_norm_backward "
        "numbers them), or use dx = r (d - mean(d) - xhat mean(d xhat)), d = dout * scale"},
))


# -- lesson 5: token mixing, forward and backward -----------------------------------------------------------------


def _mlp_params(r: np.random.Generator, d: int, hidden: int) -> dict[str, np.ndarray]:
    return {"Dense_0/kernel": r.standard_normal((d, hidden)) / math.sqrt(d), "Dense_0/bias": r.standard_normal(hidden),
            "Dense_1/kernel": r.standard_normal((hidden, d)) / math.sqrt(hidden), "Dense_1/bias": r.standard_normal(d)}


_TOKEN_SHAPES = ((2, 4, 4, 5), (2, 3, 5, 6), (1, 6, 2, 3))  # (B, S, C, D_S); S = C first: the axes can be confused


def _token_forward_cases(r: np.random.Generator) -> list[Case]:
    return [Case((r.standard_normal((b, s, c)), _mlp_params(r, s, ds)), f"x (B, S, C) = {(b, s, c)}, D_S = {ds}")
            for b, s, c, ds in _TOKEN_SHAPES]


def _token_forward_with(axis_channels: bool = False, gelu: str | None = "tanh", biases: bool = True,
                        transpose_back: bool = True) -> Callable:
    def outputs(x: np.ndarray, p: dict) -> np.ndarray:
        xt = x if axis_channels else x.transpose(0, 2, 1)
        h = xt @ p["Dense_0/kernel"] + (p["Dense_0/bias"] if biases else 0.0)
        a = h if gelu is None else ref.GELU[gelu][0](h)[0]
        yt = a @ p["Dense_1/kernel"] + (p["Dense_1/bias"] if biases else 0.0)
        return yt if axis_channels or not transpose_back else yt.transpose(0, 2, 1)
    return outputs


_register(Exercise(
    "token_mixing_forward", 5,
    "def token_mixing_forward(x, params) -> (out, cache) (or out alone): the MLP W2 GELU(W1 . + b1) + b2 applied "
    "across the S tokens of every channel, the same weights for all channels, tanh GELU. x (B, S, C); params "
    "'Dense_0/kernel' (S, D_S), 'Dense_0/bias' (D_S,), 'Dense_1/kernel' (D_S, S), 'Dense_1/bias' (S,); "
    "out (B, S, C).",
    ref.token_mixing_forward, ("out",), _token_forward_cases, (
        Mistake("mixing along the channel axis", "token mixing mixes the S tokens of each channel: bring the "
                "tokens to the last axis first (x.transpose(0, 2, 1), (B, C, S)), apply the MLP, transpose back",
                _token_forward_with(axis_channels=True)),
        Mistake("the result left in (B, C, S) order", "transpose the MLP's output back to (B, S, C)",
                _token_forward_with(transpose_back=False)),
        Mistake("no GELU between the two dense layers", "out = W2 GELU(W1 x + b1) + b2: without the "
                "nonlinearity two dense layers are one linear map", _token_forward_with(gelu=None)),
        Mistake("the erf GELU", "the official Mixer uses the tanh approximation: reference.gelu_tanh_forward",
                _token_forward_with(gelu="erf")),
        Mistake("the biases left out", "each dense layer adds its bias: + b1 after W1, + b2 after W2",
                _token_forward_with(biases=False)),
    ), {"error": "W1 is (S, D_S): it multiplies the token axis, so the tokens must be the last axis "
                 "(x.transpose(0, 2, 1)) before x @ W1"},
    forward_only=True,
))


def _params_backward_case(r: np.random.Generator, forward: Callable, x: np.ndarray, params: dict, label: str
                          ) -> Case:
    """A case for the backward of ``forward(x, params)``: (dout, cache), with finite differences for dx and
    every parameter (the outputs "dx" and "grads['name']")."""
    out, cache = forward(x, params)
    dout = r.standard_normal(out.shape)
    grads = {f"grads[{k!r}]": f"params/{k}" for k in params}
    return Case((dout, cache), label, _numerical(forward, {"x": x, "params": params}, dout, dx="x", **grads))


def _token_backward_cases(r: np.random.Generator) -> list[Case]:
    return [_params_backward_case(r, ref.token_mixing_forward, r.standard_normal((b, s, c)), _mlp_params(r, s, ds),
                                  f"x (B, S, C) = {(b, s, c)}, D_S = {ds}") for b, s, c, ds in _TOKEN_SHAPES]


def _token_backward_with(transpose_in: bool = True, transpose_out: bool = True) -> Callable:
    def outputs(dout: np.ndarray, cache: tuple) -> tuple:
        dyt = dout.transpose(0, 2, 1) if transpose_in else dout
        dxt, grads = ref.mlp_backward(dyt, cache)
        return (dxt.transpose(0, 2, 1) if transpose_out else dxt), grads
    return outputs


_register(Exercise(
    "token_mixing_backward", 5,
    "def token_mixing_backward(dout, cache) -> (dx, grads) for reference.token_mixing_forward: cache is the "
    "cache of reference.mlp_forward on the transposed input (B, C, S); grads maps the four parameter names "
    "to their gradients. Use reference.mlp_backward for the MLP itself: the exercise is the transposes.",
    ref.token_mixing_backward, ("dx", "grads"), _token_backward_cases, (
        Mistake("dout not brought into the MLP's (B, C, S) order", "the MLP ran on x.transpose(0, 2, 1): "
                "transpose dout the same way before mlp_backward", _token_backward_with(transpose_in=False)),
        Mistake("dx left in (B, C, S) order", "mlp_backward returns the gradient of the transposed input: "
                "transpose it back to (B, S, C)", _token_backward_with(transpose_out=False)),
    ), {"error": "the MLP's cache is for (B, C, S) arrays: dout.transpose(0, 2, 1) goes in, and dx comes out "
                 "in that order too"},
))


# -- lesson 6: the Mixer block's backward -------------------------------------------------------------------------


def _block_params(r: np.random.Generator, s: int, c: int, ds: int, dc: int) -> dict[str, np.ndarray]:
    p = {"LayerNorm_0/scale": 1 + 0.3 * r.standard_normal(c), "LayerNorm_0/bias": r.standard_normal(c),
         "LayerNorm_1/scale": 1 + 0.3 * r.standard_normal(c), "LayerNorm_1/bias": r.standard_normal(c)}
    p.update({f"token_mixing/{k}": v for k, v in _mlp_params(r, s, ds).items()})
    p.update({f"channel_mixing/{k}": v for k, v in _mlp_params(r, c, dc).items()})
    return p


def _block_cases(r: np.random.Generator) -> list[Case]:
    return [_params_backward_case(r, ref.mixer_block_forward, r.standard_normal((b, s, c)),
                                  _block_params(r, s, c, ds, dc), f"x (B, S, C) = {(b, s, c)}")
            for b, s, c, ds, dc in ((2, 3, 4, 5, 6), (1, 4, 2, 3, 5))]


def _block_backward_with(first_residual: bool = True, second_residual: bool = True, token_from_dout: bool = False
                         ) -> Callable:
    def outputs(dout: np.ndarray, cache: tuple) -> tuple:
        ln0, token, ln1, channel = cache
        dz, channel_grads = ref.channel_mixing_backward(dout, channel)
        dz, dscale1, dbias1 = ref.layer_norm_backward(dz, ln1)
        du = dout + dz if second_residual else dz
        dz, token_grads = ref.token_mixing_backward(dout if token_from_dout else du, token)
        dz, dscale0, dbias0 = ref.layer_norm_backward(dz, ln0)
        dx = du + dz if first_residual else dz
        grads = {"LayerNorm_0/scale": dscale0, "LayerNorm_0/bias": dbias0,
                 **{f"token_mixing/{k}": v for k, v in token_grads.items()},
                 "LayerNorm_1/scale": dscale1, "LayerNorm_1/bias": dbias1,
                 **{f"channel_mixing/{k}": v for k, v in channel_grads.items()}}
        return dx, grads
    return outputs


_register(Exercise(
    "mixer_block_backward", 6,
    "def mixer_block_backward(dout, cache) -> (dx, grads) for reference.mixer_block_forward "
    "(u = x + TokenMixing(LN_0(x)), y = u + ChannelMixing(LN_1(u))); cache = (ln0, token, ln1, channel), the "
    "caches of its four layers; grads maps each parameter name ('LayerNorm_0/scale', 'token_mixing/Dense_0/"
    "kernel', ...) to its gradient. Use the reference's layer backwards: the exercise is the residual paths.",
    ref.mixer_block_backward, ("dx", "grads"), _block_cases, (
        Mistake("both residual paths left out", "a residual sum y = u + branch(u) sends dout both into the branch "
                "AND straight on to u: du = dout + (the branch's dx); likewise dx = du + ...",
                _block_backward_with(False, False)),
        Mistake("the second residual path left out (du without dout)", "y = u + ChannelMixing(LN_1(u)): "
                "du = dout + the channel branch's gradient", _block_backward_with(second_residual=False)),
        Mistake("the first residual path left out (dx without du)", "u = x + TokenMixing(LN_0(x)): "
                "dx = du + the token branch's gradient", _block_backward_with(first_residual=False)),
        Mistake("the token branch started from dout instead of du", "the token branch's output went into u, so "
                "its gradient is du (which includes the channel branch's), not dout",
                _block_backward_with(token_from_dout=True)),
    ), {"error": "undo the forward's steps 6 to 1 in order; each layer's backward takes its own cache"},
))


# -- lesson 7: softmax cross-entropy ------------------------------------------------------------------------------


def _softmax_reference(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    loss, cache = ref.softmax_cross_entropy_forward(logits, labels)
    return loss, ref.softmax_cross_entropy_backward(1.0, cache)


def _softmax_cases(r: np.random.Generator) -> list[Case]:
    cases = []
    for b, k, spread in ((4, 3, 1.0), (8, 10, 3.0), (3, 5, 1000.0)):  # the last: exp(1000) overflows
        logits, labels = spread * r.standard_normal((b, k)), r.integers(0, k, b)

        def numerical(logits: np.ndarray = logits, labels: np.ndarray = labels) -> dict[str, np.ndarray]:
            held = logits.copy()
            return {"dlogits": numerical_gradient(
                lambda: np.array(ref.softmax_cross_entropy_forward(held, labels)[0]), held)}
        cases.append(Case((logits, labels), f"logits (B, K) = {(b, k)}, spread {spread:g}",
                          numerical if spread < 100 else None))
    return cases


def _softmax_with(batch_sum: bool = False, one_hot: bool = True, sign: float = 1.0) -> Callable:
    def outputs(logits: np.ndarray, labels: np.ndarray) -> tuple:
        loss, dlogits = _softmax_reference(logits, labels)
        b = logits.shape[0]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if not one_hot:
            dlogits = p / b
        dlogits = sign * dlogits
        return (loss * b, dlogits * b) if batch_sum else (loss, dlogits)
    return outputs


_register(Exercise(
    "softmax_cross_entropy", 7,
    "def softmax_cross_entropy(logits, labels) -> (loss, dlogits): the mean over the batch of -log softmax("
    "logits)[label], and its gradient; logits (B, K) floats, labels (B,) integers in [0, K).",
    _softmax_reference, ("loss", "dlogits"), _softmax_cases, (
        Mistake("a sum over the batch instead of the mean", "the loss is the MEAN over the B images, so both the "
                "loss and dlogits carry a factor 1/B", _softmax_with(batch_sum=True)),
        Mistake("the one-hot target not subtracted", "d(-log p_label)/dlogits = softmax(logits) - onehot(label): "
                "subtract 1 at each row's label (then divide by B)", _softmax_with(one_hot=False)),
        Mistake("the gradient's sign flipped", "dlogits = (softmax - onehot) / B: raising the true class's logit "
                "lowers the loss, so its gradient is negative", _softmax_with(sign=-1.0)),
    ), {"nonfinite": "nan or inf on large logits: exp overflows unless each row's maximum is subtracted first "
                     "(softmax is unchanged by a constant added to a row), and log(p) underflows to log(0) for a "
                     "tiny p: take the log-softmax as z - max - log(sum(exp(z - max)))",
        "loss": "loss = mean over b of -log p[b, label[b]]"},
))


# -- lesson 8: SGD with momentum, and warm-up + cosine --------------------------------------------------------------


def _sgd_reference(p: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, momentum: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One step of the library's ``SGD`` (training/optim.py) on copies: returns the new p and velocity."""
    opt = SGD(momentum=momentum)
    params, opt.state = {"p": p.copy()}, {"p": v.copy()}
    opt.step(params, {"p": g}, lr)
    return params["p"], opt.state["p"]


def _sgd_cases(r: np.random.Generator) -> list[Case]:
    return [Case((r.standard_normal(shape), r.standard_normal(shape), r.standard_normal(shape), lr, m),
                 f"shape {shape}, lr {lr}, momentum {m}")
            for shape, lr, m in (((5,), 0.1, 0.9), ((3, 4), 0.03, 0.5), ((2, 2, 3), 1.0, 0.99))]


_register(Exercise(
    "sgd_momentum", 8,
    "def sgd_momentum(p, g, v, lr, momentum) -> (p_new, v_new): one step of SGD with momentum as the library "
    "(and PyTorch) write it: v_new = momentum * v + g, then p_new = p - lr * v_new.",
    _sgd_reference, ("p_new", "v_new"), _sgd_cases, (
        Mistake("the step taken with the old velocity (momentum applied in the wrong order)", "update the "
                "velocity first, then move p with the NEW velocity",
                lambda p, g, v, lr, m: (p - lr * v, m * v + g)),
        Mistake("the velocity as an average (m v + (1 - m) g)", "that 'dampened' form is another convention "
                "(its step is (1 - m) times smaller): here v accumulates the gradients, v = m v + g",
                lambda p, g, v, lr, m: (p - lr * (m * v + (1 - m) * g), m * v + (1 - m) * g)),
        Mistake("the learning rate inside the velocity (v = m v + lr g)", "the same steps at a constant lr, but "
                "not the library's state: v holds gradients and the step multiplies by lr, so that a schedule can "
                "change lr", lambda p, g, v, lr, m: (p - (m * v + lr * g), m * v + lr * g)),
        Mistake("a step up the gradient (p + lr v)", "descent moves against the gradient: p - lr * v",
                lambda p, g, v, lr, m: (p + lr * (m * v + g), m * v + g)),
    ), {"v_new": "v_new = momentum * v + g", "p_new": "p_new = p - lr * v_new"},
))


def _schedule_reference(fn: Callable[..., float]) -> Callable[..., np.ndarray]:
    """Exercise form of a schedule: the rates of every step 0 .. total + 2, in one array."""
    def rates(base_lr: float, total_steps: int, warmup_steps: int) -> np.ndarray:
        return np.array([fn(step, base_lr, total_steps, warmup_steps) for step in range(total_steps + 3)])
    return rates


def _cosine_cases(r: np.random.Generator) -> list[Case]:
    return [Case((base, total, warmup), f"base_lr {base}, total_steps {total}, warmup_steps {warmup}")
            for base, total, warmup in ((0.1, 100, 10), (0.5, 50, 0), (1.0, 7, 3))]


def _cosine_with(warmup_shift: int = 0, from_zero: bool = False, half: bool = True, clip: bool = True) -> Callable:
    def lr(step: int, base: float, total: int, warmup: int) -> float:
        if step < warmup:
            return base * (step + warmup_shift) / warmup
        progress = step / total if from_zero else (step - warmup) / max(1, total - warmup)
        progress = min(1.0, progress) if clip else progress
        return base * (1 + math.cos(math.pi * progress)) * (0.5 if half else 1.0)
    return _schedule_reference(lr)


_register(Exercise(
    "warmup_cosine", 8,
    "def warmup_cosine(step, base_lr, total_steps, warmup_steps) -> lr (a float): a linear warm-up from 0 to "
    "base_lr over the first warmup_steps steps (step counted from 0), then a cosine from base_lr down to 0 at "
    "total_steps, and 0 after it. The check calls it for every step 0 .. total_steps + 2.",
    warmup_cosine, ("rates",), _cosine_cases, (
        Mistake("a warm-up one step ahead ((step + 1) / warmup)", "step 0 has rate 0: base_lr * step / "
                "warmup_steps", _cosine_with(warmup_shift=1)),
        Mistake("the cosine's progress counted from step 0, not from the end of the warm-up", "progress = "
                "(step - warmup_steps) / (total_steps - warmup_steps): the decay starts at base_lr",
                _cosine_with(from_zero=True)),
        Mistake("the cosine without its 1/2", "base_lr * (1 + cos(pi progress)) / 2 starts at base_lr",
                _cosine_with(half=False)),
        Mistake("a rate that rises again after total_steps", "clip progress to 1: min(1, progress)",
                _cosine_with(clip=False)),
    ), {"error": "with warmup_steps = 0 there is no warm-up: do not divide by it",
        "rates": "the rates, step by step, must be those of reference('warmup_cosine')"},
    wrap=_schedule_reference,
))

