"""Named arrays that are consecutive views of one contiguous buffer: the parameters, the gradients, the optimiser's
state.

Why: an update rule written per parameter costs a few array calls per parameter, ~100 parameters for a small Mixer,
so thousands of calls a step; on a GPU each call is a kernel launch of a few microseconds, and the step is then
bound by launches, not arithmetic. When the parameters, their gradients and the state are views of one buffer each,
in the same order, the same elementwise rule runs on the whole buffers at once: a handful of calls per step, and
the same numbers (an elementwise rule does to each element exactly what it did before). The per-parameter loops
stay in ``training/optim.py`` as the readable reference, and whatever is not flat goes through them.

    params = FlatArrays.of({"a": a, "b": b}, xp)     # copies a and b into one buffer; params["a"] is a view
    params.buffer                                     # the 1-D buffer, a's elements then b's
    grads = params.zeros_like()                       # the same layout, zeros
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .backend import array_module

Array = Any


class FlatArrays(dict):
    """A dict name -> array whose arrays are consecutive views of ``buffer`` (1-D, contiguous), in insertion order.

    Assigning to an existing name copies into its view (so ``buffer`` stays the truth); new names cannot be added.
    """

    buffer: Array
    layout: tuple[tuple[str, tuple[int, ...]], ...]

    def __init__(self, buffer: Array, shapes: Mapping[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.buffer = buffer
        self.layout = tuple((name, tuple(shape)) for name, shape in shapes.items())
        start, views = 0, []
        for name, shape in self.layout:
            stop = start + math.prod(shape)
            views.append(buffer[start:stop].reshape(shape))
            dict.__setitem__(self, name, views[-1])
            start = stop
        if start != buffer.size:
            raise ValueError(f"the shapes hold {start} elements, the buffer {buffer.size}")
        self._views = tuple(views)

    @classmethod
    def of(cls, arrays: Mapping[str, Array], xp: Any, dtype: Any = None) -> FlatArrays:
        """The arrays copied (and cast to ``dtype``) into one new buffer of the array module ``xp``."""
        values = list(arrays.values())
        dtype = dtype if dtype is not None else (values[0].dtype if values else "float32")
        flat = cls(xp.empty(sum(math.prod(v.shape) for v in values), dtype=dtype),
                   {name: tuple(v.shape) for name, v in arrays.items()})
        for name, value in arrays.items():
            flat[name][...] = xp.asarray(value, dtype=dtype)
        return flat

    def zeros_like(self, prefix: str = "") -> FlatArrays:
        """A new FlatArrays of zeros in the same layout (names prefixed by ``prefix``, e.g. "m/")."""
        xp = array_module(self.buffer)
        return FlatArrays(xp.zeros_like(self.buffer), {prefix + name: shape for name, shape in self.layout})

    def same_layout(self, other: Any) -> bool:
        """Whether ``other`` is a FlatArrays of the same shapes in the same order (names may differ by a prefix)."""
        return isinstance(other, FlatArrays) and [s for _, s in other.layout] == [s for _, s in self.layout] \
            and other.buffer.dtype == self.buffer.dtype and other.intact()

    def intact(self) -> bool:
        """Whether every name still holds its view of ``buffer`` (``dict.__setitem__`` or the like could have put
        another array there; the whole-buffer path is then not taken)."""
        return all(dict.__getitem__(self, name) is view for (name, _), view in zip(self.layout, self._views,
                                                                                   strict=True))

    # Writing copies into the views, so that ``buffer`` stays the truth; the set of names is fixed.
    def __setitem__(self, name: str, value: Array) -> None:
        if name not in self:
            raise KeyError(f"{name!r}: a FlatArrays has a fixed set of names ({len(self)}); it cannot grow")
        view = dict.__getitem__(self, name)
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(view.shape) and shape != ():  # a scalar fills it; any other shape is a mistake
            raise ValueError(f"{name!r} is {tuple(view.shape)}; the value given is {shape} (the values are copied "
                             f"into the parameter's memory, so the shape must be the same)")
        view[...] = value

    def update(self, *others: Any, **named: Array) -> None:  # dict.update would bypass __setitem__
        for name, value in dict(*others, **named).items():
            self[name] = value

    def setdefault(self, name: str, value: Array = None) -> Array:
        if name not in self:
            raise KeyError(f"{name!r}: a FlatArrays has a fixed set of names; it cannot grow")
        return self[name]

    def _fixed(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a FlatArrays has a fixed set of names: nothing can be removed (to change values, assign "
                        "them: params[name] = array, or params.update(other))")

    __delitem__ = pop = popitem = clear = __ior__ = _fixed
