"""The paper's fine-tuning recipe: SGD with momentum, global-norm gradient clipping, warm-up + cosine schedule.

An update rule is a small function of (parameters, gradients, state); a schedule is a pure function of the step
number. Parameters, gradients and state are dicts name -> array, updated in place (no new arrays per step).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .backend import array_module

Array = Any


def global_norm(grads: dict[str, Array]) -> Array:
    """sqrt(sum over every gradient of sum(g^2)): the length of all gradients seen as one vector.

    Returns a 0-d array on the gradients' device (no host sync)."""
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
    xp = array_module(*grads.values())
    norm = global_norm(grads)
    scale = xp.minimum(1.0, max_norm / xp.maximum(norm, 1e-30))  # norm = 0 gives scale 1, not a division by 0
    for g in grads.values():
        g *= scale.astype(g.dtype)
    return norm


class SGD:
    """SGD with momentum (the official fine-tuning optimiser; momentum 0.9 there):

        v <- momentum * v + g
        p <- p - lr * v                                  (plain)
        p <- p - lr * (g + momentum * v)                 (nesterov=True)

    ``weight_decay`` > 0 adds decoupled weight decay, ``p <- p - lr * weight_decay * p`` (default 0, as the
    recipe). The velocities start at zero and live in ``self.state`` (name -> array), which a checkpoint saves.
    """

    def __init__(self, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.state: dict[str, Array] = {}

    def step(self, params: dict[str, Array], grads: dict[str, Array], lr: float) -> None:
        """Update every parameter in place with its gradient at learning rate ``lr``."""
        for name, p in params.items():
            g = grads[name]
            v = self.state.get(name)
            if v is None:
                v = self.state[name] = array_module(p).zeros_like(p)
            v *= self.momentum
            v += g
            if self.weight_decay:
                p -= (lr * self.weight_decay) * p
            if self.nesterov:
                p -= lr * (g + self.momentum * v)
            else:
                p -= lr * v


def warmup_cosine(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (counted from 0): a linear warm-up from 0 to ``base_lr`` over
    ``warmup_steps``, then a cosine decay from ``base_lr`` to ``end_lr`` at ``total_steps``, then ``end_lr``.

        warm-up   (step < warmup):  base_lr * step / warmup
        cosine    (otherwise):      end_lr + (base_lr - end_lr) * (1 + cos(pi * progress)) / 2,
                                    progress = (step - warmup) / (total - warmup), clipped to [0, 1]
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got warmup_steps="
                         f"{warmup_steps}, total_steps={total_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end_lr + (base_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
