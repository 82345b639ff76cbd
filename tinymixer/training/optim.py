"""The training recipes' pieces: SGD with momentum (the paper's fine-tuning), Adam and AdamW (its pre-training),
weight decay that skips biases and LayerNorm parameters, global-norm gradient clipping, and the learning-rate
schedules (linear warm-up, then cosine or linear decay).

An update rule is a small function of (parameters, gradients, state); a schedule is a pure function of the step
number. Parameters, gradients and state are dicts name -> array, updated in place (no new arrays per step).

Each rule is written once per parameter, the readable reference. When the parameters and gradients are views of
one buffer each (``flat.FlatArrays``: a network's ``params`` and ``grads``), the same elementwise rule runs on the
whole buffers at once: the same numbers, in tens of array calls per step instead of thousands (on a GPU, each call
is a kernel launch). Clipping likewise takes one dot product over the gradient buffer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..backend import array_module
from ..chunks import for_row_blocks
from ..flat import FlatArrays

Array = Any
DecayMask = Mapping[str, bool] | Callable[[str], bool] | None
"""Which parameters weight decay applies to: None (all of them), a dict name -> bool (``decay_mask(names)``), or a
function name -> bool."""

KERNEL_PATTERN = r".*/kernel"
"""big_vision's default weight-decay mask: names that end in ``/kernel`` (matched in full, ``re.fullmatch``)."""


def global_norm(grads: dict[str, Array]) -> Array:
    """sqrt(sum over every gradient of sum(g^2)): the length of all gradients seen as one vector.

    Returns a 0-d array on the gradients' device (no host sync)."""
    if isinstance(grads, FlatArrays):  # one buffer: one dot product
        xp = array_module(grads.buffer)
        return xp.sqrt(xp.vdot(grads.buffer, grads.buffer))
    xp = array_module(*grads.values())
    total = sum(xp.vdot(g.ravel(), g.ravel()) for g in grads.values())  # vdot: one BLAS call, no temporaries
    return xp.sqrt(total)


def clip_by_global_norm(grads: dict[str, Array], max_norm: float) -> Array:
    """Scale all gradients together, in place, so that their global norm is at most ``max_norm``:

        g <- g * min(1, max_norm / ||g||)

    Every gradient keeps its direction. (Clipping each tensor on its own would change the direction of the whole
    update, which the recipe does not do.) The scale is array arithmetic, not a Python ``if``, so on a GPU nothing
    waits for the norm. Returns the norm before clipping (0-d array).
    """
    if not max_norm > 0:  # a negative bound would flip every gradient: the step would climb the loss
        raise ValueError(f"max_norm must be positive, got {max_norm} (to train without clipping, leave it out: "
                         f"clip=0)")
    xp = array_module(*grads.values())
    norm = global_norm(grads)
    scale = xp.minimum(1.0, max_norm / xp.maximum(norm, 1e-30))  # norm = 0 gives scale 1, not a division by 0
    if isinstance(grads, FlatArrays):  # one buffer: one scaling
        grads.buffer *= scale.astype(grads.buffer.dtype)
        return norm
    for g in grads.values():
        g *= scale.astype(g.dtype)
    return norm


def decay_mask(param_names: Iterable[str], pattern: str = KERNEL_PATTERN) -> dict[str, bool]:
    """Which parameters weight decay applies to, decided as the official big_vision code does: a parameter decays
    when its whole name matches ``pattern`` (``re.fullmatch``; default ``.*/kernel``).

    For an MLP-Mixer that is every weight matrix: ``stem/kernel``, the four ``Dense_*/kernel`` of every block, and
    ``head/kernel``; no bias (``*/bias``) and no LayerNorm parameter (``LayerNorm_*/scale``, ``LayerNorm_*/bias``,
    ``pre_head_layer_norm/*``) decays. Pass the result as ``decay_mask=`` to SGD, Adam or AdamW. ``param_names``
    may be the params dict itself (its keys are the names).
    """
    regex = re.compile(pattern)
    return {name: regex.fullmatch(name) is not None for name in param_names}


def _decays(mask: DecayMask, name: str) -> bool:
    """Whether weight decay applies to parameter ``name`` under ``mask`` (None: every parameter decays)."""
    if mask is None:
        return True
    if isinstance(mask, Mapping):
        if name not in mask:
            raise KeyError(f"decay_mask has no entry for parameter {name!r}; build it from the same parameters "
                           f"(decay_mask(model.params))")
        return bool(mask[name])
    return bool(mask(name))


def _check_rate(name: str, value: float) -> None:
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class _Optimizer:
    """What every optimiser here shares: ``state`` (a flat dict name -> array, which a checkpoint saves as it is),
    ``init`` (the state before any step) and ``load_state`` (resume from saved state); for the whole-buffer path,
    the state as views of buffers in the parameters' layout, and the weight-decay mask as a vector."""

    state: dict[str, Array]
    decay_mask: DecayMask

    @staticmethod
    def _flat(params: Any, grads: Any) -> bool:
        """Whether the whole-buffer path applies: parameters and gradients are views of one buffer each, alike."""
        return isinstance(params, FlatArrays) and params.intact() and params.same_layout(grads)

    def _flat_state(self, params: FlatArrays, prefix: str) -> FlatArrays:
        """The state entries ``prefix + name`` as views of one buffer in the parameters' layout: made (zeros, or
        a copy of the entries ``self.state`` already holds, e.g. after ``load_state`` or a resume) when the state
        is not that yet, and kept in ``self.state`` under the same names (a checkpoint sees no difference)."""
        flats = self.__dict__.setdefault("_flats", {})
        flat = flats.get(prefix)
        first = prefix + params.layout[0][0]
        if flat is not None and flat.same_layout(params) and self.state.get(first) is flat[first]:
            return flat
        flat = flats[prefix] = params.zeros_like(prefix)
        xp = array_module(params.buffer)
        for name, view in flat.items():
            if name in self.state:
                view[...] = xp.asarray(self.state[name])
        self.state.update(flat)
        return flat

    def _decay_vector(self, params: FlatArrays) -> Array:
        """1 where weight decay applies, 0 elsewhere, in the parameters' layout (made once per layout)."""
        cached = self.__dict__.get("_decay")
        if cached is None or cached[0] != params.layout:
            vector = params.zeros_like()
            for name, view in vector.items():
                if _decays(self.decay_mask, name):
                    view.fill(1)
            cached = self._decay = (params.layout, vector.buffer)
        return cached[1]

    def init(self, params: dict[str, Array]) -> None:
        """Create the state of the first step (zeros) for every parameter, on the parameters' device."""
        raise NotImplementedError

    def load_state(self, params: dict[str, Array], saved: Mapping[str, Any]) -> None:
        """Resume: make ``self.state`` the ``saved`` arrays (e.g. the host arrays ``load_checkpoint`` returns),
        copied onto the parameters' device in the state's dtypes. The names must be exactly those that ``init``
        makes for ``params``; anything else (e.g. another optimiser's state) is a ValueError, not a silent restart.
        """
        self.state = {}
        self.init(params)
        missing, unexpected = sorted(self.state.keys() - saved.keys()), sorted(saved.keys() - self.state.keys())
        if missing or unexpected:
            raise ValueError(f"saved optimiser state does not fit {type(self).__name__}: missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''}")
        for name, target in self.state.items():
            if tuple(saved[name].shape) != target.shape:
                raise ValueError(f"saved optimiser state {name!r} has shape {tuple(saved[name].shape)}, expected "
                                 f"{target.shape}")
        xp = array_module(*params.values())
        for name, target in self.state.items():
            target[...] = xp.asarray(saved[name])


class SGD(_Optimizer):
    """SGD with momentum (the official fine-tuning optimiser; momentum 0.9 there):

        v <- momentum * v + g
        p <- p - lr * v                                  (plain)
        p <- p - lr * (g + momentum * v)                 (nesterov=True)

    ``weight_decay`` > 0 adds decoupled weight decay, ``p <- p - lr * weight_decay * p`` (default 0, as the
    recipe), to every parameter, or only to those ``decay_mask`` selects (``decay_mask(params)``: the official
    code's choice, kernels only). The velocities start at zero and live in ``self.state`` (name -> array, keyed by
    the parameter names), which a checkpoint saves.
    """

    def __init__(self, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0,
                 decay_mask: DecayMask = None) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.decay_mask = decay_mask
        self.state: dict[str, Array] = {}

    def init(self, params: dict[str, Array]) -> None:
        for name, p in params.items():
            self.state[name] = array_module(p).zeros_like(p)

    def step(self, params: dict[str, Array], grads: dict[str, Array], lr: float) -> None:
        """Update every parameter in place with its gradient at learning rate ``lr``."""
        if self._flat(params, grads):
            return self._step_flat(params, grads, lr)
        for name, p in params.items():
            g = grads[name]
            v = self.state.get(name)
            if v is None:
                v = self.state[name] = array_module(p).zeros_like(p)
            v *= self.momentum
            v += g
            if self.weight_decay and _decays(self.decay_mask, name):
                p -= (lr * self.weight_decay) * p
            if self.nesterov:
                p -= lr * (g + self.momentum * v)
            else:
                p -= lr * v

    def _step_flat(self, params: FlatArrays, grads: FlatArrays, lr: float) -> None:
        """``step`` on the whole buffers: every operation of the loop above, once (the same numbers). On the CPU
        in cache-sized blocks on the cores (``chunks.for_row_blocks``); on a GPU, one call per operation."""
        columns = [params.buffer, grads.buffer, self._flat_state(params, "").buffer]
        if self.weight_decay:
            columns.append(self._decay_vector(params))
        for_row_blocks(lambda *blocks: self._update(lr, *blocks), *(c.reshape(-1, 1) for c in columns))

    def _update(self, lr: float, p: Array, g: Array, v: Array, decay: Array | None = None) -> None:
        """The update of a block of the buffers (p, g, v and the decay mask's 0/1 of the same elements)."""
        v *= self.momentum
        v += g
        if decay is not None:
            shrink = (lr * self.weight_decay) * p
            shrink *= decay  # 0 where the mask says no: p - 0 is p exactly
            p -= shrink
        if self.nesterov:
            p -= lr * (g + self.momentum * v)
        else:
            p -= lr * v


class Adam(_Optimizer):
    """Adam (Kingma & Ba, 2015), with their bias correction; the paper pre-trains with it (b1 0.9, b2 0.999).
    At step t = 1, 2, ... (gradient g, learning rate lr):

        m <- b1 * m + (1 - b1) * g                       first moment
        v <- b2 * v + (1 - b2) * g^2                     second moment
        m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)  bias correction
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    This is optax's ``scale_by_adam`` (eps outside the square root of the bias-corrected v; its ``eps_root`` is
    left out, being 0 by default), which big_vision's Mixer recipe uses. At t = 1, m_hat = g and v_hat = g^2, so
    the first step moves every parameter by lr * sign(g) (less eps).

    ``l2`` > 0 (default 0) is **coupled** L2 regularisation, the ``weight_decay`` of ``torch.optim.Adam``: the
    gradient of (l2 / 2) * ||p||^2 is added to g before the moments, ``g <- g + l2 * p``, so Adam divides it by
    sqrt(v_hat) like the rest of the gradient and it is not a weight decay (Loshchilov & Hutter). For the decoupled
    weight decay of the recipes, use AdamW. ``decay_mask`` limits ``l2`` to the parameters it selects.

    State (flat dict of arrays, what a checkpoint saves): ``"step"``, a 0-d int64 array (t, the number of updates
    made), and ``"m/<param name>"``, ``"v/<param name>"``, each shaped and typed as its parameter. The step count
    lives on the device and the bias correction is computed there, so no step waits for the GPU.
    """

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, l2: float = 0.0,
                 decay_mask: DecayMask = None) -> None:
        for name, beta in (("b1", b1), ("b2", b2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        _check_rate("eps", eps)
        _check_rate("l2", l2)
        self.b1, self.b2, self.eps, self.l2 = b1, b2, eps, l2
        self.weight_decay = 0.0  # decoupled weight decay: AdamW's
        self.decay_mask = decay_mask
        self.state: dict[str, Array] = {}

    def init(self, params: dict[str, Array]) -> None:
        if params:
            xp = array_module(*params.values())
            # zeros_like (not zeros) keeps the counter on the parameters' device and of their array type
            self.state["step"] = xp.zeros_like(next(iter(params.values())), shape=(), dtype=xp.int64)
        for name, p in params.items():
            self._moments(name, p)

    def _moments(self, name: str, p: Array) -> tuple[Array, Array]:
        """(m, v) of parameter ``name``: zeros the first time."""
        m, v = self.state.get("m/" + name), self.state.get("v/" + name)
        if m is None:
            m = self.state["m/" + name] = array_module(p).zeros_like(p)
        if v is None:
            v = self.state["v/" + name] = array_module(p).zeros_like(p)
        return m, v

    def step(self, params: dict[str, Array], grads: dict[str, Array], lr: float) -> None:
        """Update every parameter in place with its gradient at learning rate ``lr`` (step t = state["step"] + 1).

        Per parameter one temporary array u of its shape is made (two with ``l2``): u = (1 - b1) g, then g^2,
        then v_hat, sqrt(v_hat) + eps, m / (...), and finally the step p -= u.
        """
        if not params:
            return
        if "step" not in self.state:
            self.init(params)
        if self._flat(params, grads):
            return self._step_flat(params, grads, lr)
        t = self.state["step"]
        t += 1  # in place: the 0-d array in the state
        # bias corrections as 0-d arrays on the device, in float64 (then cast to each parameter's dtype)
        step_size = lr / (1.0 - self.b1**t)  # lr / (1 - b1^t)
        inv_c2 = 1.0 / (1.0 - self.b2**t)  # 1 / (1 - b2^t)
        scalars: dict[Any, tuple[Array, Array]] = {}
        for name, p in params.items():
            g = grads[name]
            xp = array_module(p)
            m, v = self._moments(name, p)
            if p.dtype not in scalars:
                scalars[p.dtype] = (step_size.astype(p.dtype), inv_c2.astype(p.dtype))
            step_size_p, inv_c2_p = scalars[p.dtype]
            decays = (self.l2 > 0 or self.weight_decay > 0) and _decays(self.decay_mask, name)
            if self.l2 and decays:
                g = g + self.l2 * p  # coupled L2: part of the gradient
            u = xp.multiply(g, 1.0 - self.b1)
            m *= self.b1
            m += u  # m = b1 m + (1 - b1) g
            xp.multiply(g, g, out=u)
            u *= 1.0 - self.b2
            v *= self.b2
            v += u  # v = b2 v + (1 - b2) g^2
            xp.multiply(v, inv_c2_p, out=u)  # v_hat
            xp.sqrt(u, out=u)
            u += self.eps  # sqrt(v_hat) + eps
            xp.divide(m, u, out=u)
            u *= step_size_p  # lr * m_hat / (sqrt(v_hat) + eps)
            if self.weight_decay and decays:
                p *= 1.0 - lr * self.weight_decay  # decoupled: p <- p - lr * wd * p, apart from the Adam step
            p -= u

    def _step_flat(self, params: FlatArrays, grads: FlatArrays, lr: float) -> None:
        """``step`` on the whole buffers: every operation of the loop above, once (the same numbers). On the CPU
        in cache-sized blocks on the cores (``chunks.for_row_blocks``); on a GPU, one call per operation."""
        p = params.buffer
        columns = [p, grads.buffer, self._flat_state(params, "m/").buffer, self._flat_state(params, "v/").buffer]
        if self.l2 or self.weight_decay:
            columns.append(self._decay_vector(params))
        t = self.state["step"]
        t += 1
        step_size = (lr / (1.0 - self.b1**t)).astype(p.dtype)  # 0-d, on the device
        inv_c2 = (1.0 / (1.0 - self.b2**t)).astype(p.dtype)
        shrink = p.dtype.type(1.0 - lr * self.weight_decay)
        for_row_blocks(lambda *blocks: self._update(step_size, inv_c2, shrink, *blocks),
                       *(c.reshape(-1, 1) for c in columns))

    def _update(self, step_size: Array, inv_c2: Array, shrink: Any, p: Array, g: Array, m: Array, v: Array,
                decay: Array | None = None) -> None:
        """The update of a block of the buffers (p, g, m, v and the decay mask's 0/1 of the same elements)."""
        xp = array_module(p)
        if self.l2:
            penalty = self.l2 * p
            penalty *= decay  # 0 where the mask says no
            g = g + penalty
        u = xp.multiply(g, 1.0 - self.b1)
        m *= self.b1
        m += u
        xp.multiply(g, g, out=u)
        u *= 1.0 - self.b2
        v *= self.b2
        v += u
        xp.multiply(v, inv_c2, out=u)
        xp.sqrt(u, out=u)
        u += self.eps
        xp.divide(m, u, out=u)
        u *= step_size
        if self.weight_decay:
            # p *= 1 - lr wd where the mask says so, p *= 1 (exactly p) elsewhere: (shrink - 1) is exact in floating
            # point (Sterbenz), so 0/1 * (shrink - 1) + 1 is exactly shrink or exactly 1
            factor = decay * (shrink - 1)
            factor += 1
            p *= factor
        p -= u


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): the Adam step of ``Adam`` (see there), and the
    decay applied to the parameter itself, never passing through the moments:

        p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

    This is optax's ``adamw`` (scale_by_adam, then add_decayed_weights, then the learning rate): the decay is
    scaled by the scheduled learning rate lr (as in PyTorch's AdamW). With a zero gradient a parameter shrinks by
    exactly (1 - lr * weight_decay) per step. ``decay_mask`` selects the parameters that decay (the official code:
    ``decay_mask(params)``, kernels only); by default all do.

    big_vision (the official Mixer code) scales its ``wd`` by the schedule's multiplier only, not by the base
    learning rate: p <- p - s(t) * (base_lr * adam_step + wd * p), s(t) = lr(t) / base_lr. That is this class with
    ``weight_decay = wd / base_lr``: its ImageNet recipe (lr 1e-3, wd 1e-4) is ``AdamW(weight_decay=0.1)``.

    State: as ``Adam`` (``"step"``, ``"m/<name>"``, ``"v/<name>"``).
    """

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, weight_decay: float,
                 decay_mask: DecayMask = None) -> None:
        super().__init__(b1=b1, b2=b2, eps=eps, l2=0.0, decay_mask=decay_mask)
        _check_rate("weight_decay", weight_decay)
        self.weight_decay = weight_decay


def _check_schedule(total_steps: int, warmup_steps: int, step: int = 0) -> None:
    if step < 0:
        raise ValueError(f"step counts from 0, got {step}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got warmup_steps="
                         f"{warmup_steps}, total_steps={total_steps}")


def warmup_cosine(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (counted from 0): a linear warm-up from 0 to ``base_lr`` over
    ``warmup_steps``, then a cosine decay from ``base_lr`` to ``end_lr`` at ``total_steps``, then ``end_lr``.

        warm-up   (step < warmup):  base_lr * step / warmup
        cosine    (otherwise):      end_lr + (base_lr - end_lr) * (1 + cos(pi * progress)) / 2,
                                    progress = (step - warmup) / (total - warmup), clipped to [0, 1]
    """
    _check_schedule(total_steps, warmup_steps, step)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end_lr + (base_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))



def warmup_linear_decay(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
                        end_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (counted from 0): a linear warm-up from 0 to ``base_lr`` over
    ``warmup_steps``, then a linear decay from ``base_lr`` to ``end_lr`` at ``total_steps``, then ``end_lr``
    (the paper's pre-training schedule; big_vision's ``decay_type='linear'``):

        warm-up   (step < warmup):  base_lr * step / warmup
        linear    (otherwise):      end_lr + (base_lr - end_lr) * (1 - progress),
                                    progress = (step - warmup) / (total - warmup), clipped to [0, 1]

    big_vision's ``linear_end`` is a fraction of the base learning rate (its schedule multiplies ``lr``): its
    Mixer recipe's ``linear_end=1e-5`` with lr 1e-3 is ``end_lr=1e-8`` here.
    """
    _check_schedule(total_steps, warmup_steps, step)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end_lr + (base_lr - end_lr) * (1.0 - progress)


Schedule = Callable[..., float]
SCHEDULES: dict[str, Schedule] = {"cosine": warmup_cosine, "linear": warmup_linear_decay}
"""The schedules by name, each ``f(step, base_lr, total_steps, warmup_steps=0, end_lr=0.0) -> float``."""


def schedule(name: str, step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
             end_lr: float = 0.0) -> float:
    """The learning rate at ``step`` of the schedule called ``name`` ("cosine": ``warmup_cosine``, "linear":
    ``warmup_linear_decay``); an unknown name is a ValueError that lists the known ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(sorted(SCHEDULES))}")
    return SCHEDULES[name](step, base_lr, total_steps, warmup_steps, end_lr)

def warmup_steps(spec: str | int, total_steps: int, steps_per_epoch: int) -> int:
    """The length of the warm-up in steps, from ``spec`` given in one of three units:

        "5%"     a fraction of the whole run (the default of examples/cifar10.py: it scales with the run, so a
                 short run is not all warm-up)
        "2ep"    epochs (rounded to whole steps)
        "200"    steps (an int works too)

    A warm-up longer than the run is an error, not silently shortened."""
    text = str(spec).strip().lower()
    try:
        if text.endswith("%"):
            fraction = float(text[:-1]) / 100
            if not 0 <= fraction <= 1:
                raise ValueError
            steps = round(fraction * total_steps)
        elif match := re.fullmatch(r"(.+?)\s*(ep|epoch|epochs)", text):
            steps = round(float(match[1]) * steps_per_epoch)
        else:
            steps = int(text)
    except ValueError:
        raise ValueError(f"warm-up {spec!r} is not understood: give steps (200), epochs (2ep) or a percentage of the "
                         f"run (5%), none of them negative") from None
    if steps < 0:
        raise ValueError(f"warm-up {spec!r} is negative")
    if steps > total_steps:
        raise ValueError(f"a warm-up of {spec} ({steps} steps) is longer than the whole run ({total_steps} steps); "
                         f"give it as a percentage of the run (e.g. 5%) or in epochs (e.g. 1ep)")
    return steps
