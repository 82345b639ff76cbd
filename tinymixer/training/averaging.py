"""Weight averaging: an exponential moving average (EMA) of the weights, evaluated beside the weights themselves.

After every update, every parameter's average moves a little towards it:

    ema <- ema + (1 - d_t) (p - ema),        d_t = min(decay, (1 + t) / (10 + t)),   t = updates so far

so that the average forgets old weights with a time constant of about 1 / (1 - decay) steps. The warm-up of d_t
(as TensorFlow's ExponentialMovingAverage with ``num_updates``) keeps the first steps' random weights from
dominating the average of a short run. The average is a second copy of the weights, updated in place on their
device (no host synchronisation), kept in ``state`` as a flat dict of arrays (its step count too) so that a
checkpoint holds it and a resumed run continues it bit-exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

Array = Any


class ExponentialMovingAverage:
    """``ema.update(model.params)`` after each step; ``with ema.swapped_into(model): evaluate(model, ...)``."""

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state: dict[str, Array] = {}  # "step" (0-d int64) and one average per parameter

    def update(self, params: dict[str, Array]) -> None:
        """Move every average towards its parameter, in place."""
        if not self.state:
            self.state = {name: p.copy() for name, p in params.items()}
            self.state["step"] = np.zeros((), np.int64)
            return
        t = int(self.state["step"]) + 1  # a host counter: reading it costs no device synchronisation
        self.state["step"] = np.asarray(t, np.int64)
        rate = 1.0 - min(self.decay, (1.0 + t) / (10.0 + t))
        for name, p in params.items():
            average = self.state[name]
            average += rate * (p - average)

    @contextmanager
    def swapped_into(self, model: Any) -> Iterator[None]:
        """Within the block, ``model`` computes with the averaged weights (its own are put back afterwards)."""
        if not self.state:
            yield
            return
        saved = {name: value.copy() for name, value in model.params.items()}
        for name, value in model.params.items():
            value[...] = self.state[name]
        try:
            yield
        finally:
            for name, value in model.params.items():
                value[...] = saved[name]
