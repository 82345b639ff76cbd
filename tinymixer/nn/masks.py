"""Random keep masks for dropout and stochastic depth, computed where they are used: on the device, in one kernel.

A mask is a rule, not a stored array. Element ``j`` of image ``b`` (``b`` counted in the *whole* batch, ``j`` in
the image's flattened mask of ``n`` elements) is kept when a hash of its position is at least a threshold:

    g       = b * n + j                     the element's number in the whole batch's mask (uint32)
    u       = h(h(g + k1) ^ k2)             k1, k2: the mask's two 32-bit keys, drawn from the run's generator
    keep    = u >= t,   t = round(rate * 2^32),   so P(keep) = 1 - t / 2^32  (exact to 2^-32)

``h`` is lowbias32 (C. Wellons's integer hash: a bijection of 32-bit words whose every input bit flips each
output bit with probability close to 1/2). Two rounds with a key between them, so that neither nearby elements
nor two masks whose ``k1`` happen to be close share any structure (``tests/test_masks.py`` measures it).

Why a hash of the position rather than a random-number generator:
- **Any part of the batch computes its own rows and only those**, with the same numbers whatever the split: a
  thread's shard, a process's share, an accumulation part, one GPU of several. ``mask[rows]`` is another rule.
- **On a GPU the mask is one fused kernel** (``backend.fused``): no random numbers drawn on the host (for ``tiny/4``
  at batch 128 that was 42 MB and ~200 ms a step) and no copy to the device.
- **A resumed run computes the same masks**: the keys come from the run's seeded generator, two per mask.
- NumPy and CuPy compute the same bits (integer arithmetic has no rounding), so a run on either device drops the
  same elements.

The hash costs about as much per element on a CPU core as NumPy's float32 generator did (measured: ~9 ns), and
runs on every core a batch is sharded over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import fused
from ..chunks import for_row_blocks

_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)  # lowbias32's multipliers
_S15, _S16 = np.uint32(15), np.uint32(16)
_LIMIT = 1 << 32  # elements of one mask over the whole batch, at most (g is a 32-bit word)


def lowbias32(x: Any) -> Any:
    """One round of the hash on a uint32 array (the arithmetic wraps modulo 2^32, on NumPy and CuPy alike)."""
    x = x ^ (x >> _S16)
    x = x * _M1
    x = x ^ (x >> _S15)
    x = x * _M2
    return x ^ (x >> _S16)


def kept(image: Any, position: Any, n: Any, k1: Any, k2: Any, threshold: Any) -> Any:
    """keep = h(h(image * n + position + k1) ^ k2) >= threshold, on uint32 operands that broadcast (image: the
    images' numbers, position: the elements' within an image). Operators only, so that it runs inside any fused
    kernel: a GPU's dropout computes its mask in the kernel that applies it (``KeepMask.rule``)."""
    return lowbias32(lowbias32(image * n + position + k1) ^ k2) >= threshold


@fused
def _keep(xp: Any, image: Any, position: Any, n: Any, k1: Any, k2: Any, threshold: Any) -> Any:
    """``kept`` as one kernel: image (B, 1, ...), position (1, ...), uint32 -> their broadcast shape, bool."""
    return kept(image, position, n, k1, k2, threshold)


_counters: dict[tuple[Any, int, int, tuple[int, ...]], Any] = {}  # (xp, start, stop, shape) -> a uint32 arange


def _counter(xp: Any, start: int, stop: int, shape: tuple[int, ...]) -> Any:
    """``arange(start, stop)`` as uint32 in ``shape`` (a column (-1, 1), a row (1, -1), ...), kept for the next
    step's masks (the same shards, shares and shapes come back every step: no kernel spent on making them again)."""
    key = (xp, start, stop, shape)
    counter = _counters.get(key)
    if counter is None:
        if len(_counters) > 256:  # many shapes seen (a notebook trying sizes): start again
            _counters.clear()
        counter = _counters[key] = xp.arange(start, stop, dtype=np.uint32).reshape(shape)
    return counter


@dataclass(frozen=True)
class KeepMask:
    """The keep mask of one regulariser in one training pass, as a rule: ``array(xp)`` computes it.

    ``keys``: the two 32-bit keys; ``rate``: the drop rate; ``shape``: the mask's shape, images first, for the
    images ``first, first + 1, ...`` of the batch (a part of the batch is a KeepMask of its rows: ``mask[a:b]``).
    """

    keys: tuple[int, int]
    rate: float
    shape: tuple[int, ...]
    first: int = 0

    @classmethod
    def draw(cls, rng: np.random.Generator, shape: tuple[int, ...], rate: float) -> KeepMask:
        """A new mask of ``shape`` (batch first): its two keys drawn from ``rng``."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"a drop rate must be in [0, 1), got {rate}")
        if math.prod(shape) >= _LIMIT:
            raise ValueError(f"a keep mask of shape {shape} has 2^32 elements or more, beyond its 32-bit counter; "
                             f"use a smaller batch per step (e.g. --accumulate)")
        k1, k2 = (int(k) for k in rng.integers(_LIMIT, size=2, dtype=np.uint64))
        return cls((k1, k2), float(rate), tuple(int(d) for d in shape))

    @property
    def threshold(self) -> np.uint32:
        """t = round(rate * 2^32), at most 2^32 - 1 (a rate within 2^-33 of 1 would round to 2^32, past uint32)."""
        return np.uint32(min(round(self.rate * _LIMIT), _LIMIT - 1))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __getitem__(self, index: Any) -> KeepMask:
        """The mask of some consecutive images: ``index`` a slice of the batch axis (step 1), or a NumPy array of
        consecutive image indices (``np.arange(a, b)``)."""
        if isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu" and (
                len(index) == 0 or np.array_equal(index, np.arange(index[0], index[0] + len(index)))):
            index = slice(int(index[0]), int(index[0]) + len(index)) if len(index) else slice(0, 0)
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"a KeepMask is cut into consecutive images (a shard, a share, an accumulation part), "
                            f"by a slice; not by {index!r}")
        start, stop, _ = index.indices(self.shape[0])
        stop = max(start, stop)
        return KeepMask(self.keys, self.rate, (stop - start, *self.shape[1:]), self.first + start)

    def array(self, xp: Any = np) -> Any:
        """The mask as a bool array of ``shape`` (True: kept) in the array module ``xp``: one fused kernel on a
        GPU; on NumPy in cache-sized blocks of images."""
        images, n = self.shape[0], math.prod(self.shape[1:])
        if images == 0 or n == 0:
            return xp.ones(self.shape, dtype=bool)
        if xp is not np:  # the rule's operands broadcast to the mask's own shape: one kernel, no reshape
            return _keep(*self.rule(xp, self.ndim))
        threshold = self.threshold
        k1, k2 = np.uint32(self.keys[0]), np.uint32(self.keys[1])
        image = _counter(xp, self.first, self.first + images, (-1, 1))  # (B, 1)
        position = _counter(xp, 0, n, (1, -1))  # (1, n)
        out = np.empty((images, n), dtype=bool)

        def block(image_rows: np.ndarray, out_rows: np.ndarray) -> None:
            out_rows[...] = _keep(image_rows, position, np.uint32(n), k1, k2, threshold)

        for_row_blocks(block, image, out)
        return out.reshape(self.shape)


    def rule(self, xp: Any, ndim: int) -> tuple[Any, ...]:
        """The operands of ``kept`` for this mask, shaped to broadcast against an array of ``ndim`` axes whose
        leading axes are the mask's (dropout: the mask's own shape; stochastic depth: (B,) against (B, ...)):
        (image (B, 1, ..., 1), position (1, *shape[1:], 1, ...), n, k1, k2, threshold). A fused kernel that takes
        them computes the mask where it uses it: on a GPU no mask is made or kept in memory."""
        if ndim < self.ndim:
            raise ValueError(f"a mask of shape {self.shape} cannot apply to an array of {ndim} axes")
        n = math.prod(self.shape[1:])
        image = _counter(xp, self.first, self.first + self.shape[0], (-1, *(1,) * (ndim - 1)))
        position = _counter(xp, 0, n, (1, *self.shape[1:], *(1,) * (ndim - self.ndim)))
        return (image, position, np.uint32(n), np.uint32(self.keys[0]), np.uint32(self.keys[1]),
                self.threshold)


def as_array(mask: Any, xp: Any) -> Any:
    """A mask as an array of ``xp``: a KeepMask computed, an array (a mask given by hand) as it is."""
    return mask.array(xp) if isinstance(mask, KeepMask) else mask


def keep_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float) -> np.ndarray:
    """A NumPy bool array of ``shape`` whose entries are independently True (kept) with probability ``1 - rate``:
    a KeepMask drawn from ``rng`` and computed on the host (for tests, gradient checks and lessons, which hold
    a mask fixed)."""
    return KeepMask.draw(rng, shape, rate).array(np)
