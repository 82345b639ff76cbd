"""A strict CuPy stand-in for machines without a GPU: NumPy underneath, CuPy's rules on top. For the tests only.

``python -m pytest --cupy-standin`` (tests/conftest.py) puts this folder's parent first on ``sys.path`` (and on
``PYTHONPATH`` for the programs the tests start), so ``import cupy`` finds this package and tinymixer's backend
takes it for a working CuPy on one GPU. It proves what a CPU can prove about the GPU path:

- **No implicit host <-> device traffic.** Like CuPy, ``np.asarray(device_array)`` raises TypeError, a NumPy
  array in an operator, ufunc or routine with device arrays raises TypeError, and ``device[...] = host_array`` does
  too. Host -> device happens only through ``asarray``/``array`` (counted), device -> host only through ``get``,
  ``asnumpy`` (counted) and the conversions that synchronise (``float``, ``int``, ``bool``, ``item``, ``tolist``,
  printing: counted as syncs).
- **CuPy's API only.** Every name and keyword is checked against ``cupy_api.json``, a snapshot read from the real
  package (``make_snapshot.py``): a NumPy-only function or keyword is an AttributeError or TypeError here, as it
  would be on a GPU. Reductions return 0-d arrays, as CuPy's do (never NumPy scalars).
- **Counts** (``cupy.standin.COUNTS``): every array call with the file and line of the caller outside this
  package, every host sync, every host->device and device->host copy; the tests hold a training step to budgets.

What it cannot prove: that CUDA itself works (kernels, cuBLAS, NCCL), CuPy's float rounding (a GPU's GEMMs and
reductions round differently from NumPy's), memory use or speed. ``python -m tinymixer.tools.gpucheck`` on a real
GPU does.
"""

from __future__ import annotations

import builtins as _builtins  # the module's own names shadow abs, all, any, bool, max, min, pow, round, sum
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy

API = json.loads((Path(__file__).resolve().parents[1] / "cupy_api.json").read_text())
__version__ = API["cupy_version"] + "+standin"
_HERE = str(Path(__file__).resolve().parent)


# ----------------------------------------------------------------------------------------------------------------
# Counting


class Counts:
    """What the code under test asked of the "device": array calls by (name, caller), syncs, copies each way."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: Counter = Counter()
        self.launches: Counter = Counter()  # the calls that compute new data (a kernel on a GPU): not views, not
        # empty/empty_like (memory from the pool)
        self.syncs: Counter = Counter()
        self.to_device: Counter = Counter()
        self.to_host: Counter = Counter()

    def snapshot(self) -> dict[str, int]:
        total = _builtins.sum
        return {"calls": total(self.calls.values()), "launches": total(self.launches.values()),
                "syncs": total(self.syncs.values()),
                "to_device": total(self.to_device.values()), "to_host": total(self.to_host.values())}


COUNTS = Counts()


def _caller() -> str:
    """file:line of the nearest frame outside this package (the code that made the call)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_HERE):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


# ----------------------------------------------------------------------------------------------------------------
# Moving between the wrapped and the plain world


def _refuse_host(value: Any, what: str) -> None:
    raise TypeError(f"Unsupported type {type(value)} in {what}: a NumPy array cannot be mixed with device arrays "
                    f"(CuPy refuses it too); move it with cupy.asarray first")


def _unwrap(value: Any, what: str) -> Any:
    """Device arrays to their NumPy arrays; a NumPy array (not a NumPy scalar) is refused; containers recursed."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        _refuse_host(value, what)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what) for v in value)
    return value


def _wrap(value: Any) -> Any:
    """NumPy results as device arrays: arrays, NumPy scalars (reductions give 0-d arrays in CuPy), containers."""
    if isinstance(value, numpy.ndarray):
        return ndarray(value)
    if isinstance(value, numpy.generic):
        return ndarray(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _check_keywords(name: str, spec: dict | None, kwargs: dict) -> None:
    if spec is None or spec.get("params") is None or spec.get("var_keyword"):
        return
    unknown = sorted(set(kwargs) - set(spec["params"]))
    if unknown:
        raise TypeError(f"cupy.{name}() got unexpected keyword argument(s) {unknown} (CuPy {API['cupy_version']} "
                        f"takes {spec['params']})")


_FUSING: list[str] = []  # the fused kernel being traced (cupy.fuse), if any
_ALLOCATIONS = {"empty", "empty_like"}  # memory from the pool, no kernel: counted as calls, not launches


def _call(name: str, spec: dict | None, target: Any, args: tuple, kwargs: dict) -> Any:
    """One array call: counted, keywords checked, device arrays unwrapped (host arrays refused), result wrapped.
    ``out=`` writes into the device array given and returns it. Inside a fused function (``fuse``) only
    elementwise operations are allowed, and they are not counted: the fused kernel counts once."""
    where = _caller()
    if _FUSING:
        if _TOP.get(name, {}).get("kind") != "ufunc" or kwargs:
            raise TypeError(f"cupy.fuse({_FUSING[-1]}): {name}{' with keywords' if kwargs else ''} is not a plain "
                            f"elementwise operation (this stand-in allows ufuncs and operators only in fused "
                            f"functions: what CuPy's fusion surely compiles)")
    else:
        COUNTS.calls[(name, where)] += 1
    _check_keywords(name, spec, kwargs)
    out = kwargs.get("out")
    plain_args = _unwrap(args, f"cupy.{name}")
    plain_kwargs = {k: _unwrap(v, f"cupy.{name}") for k, v in kwargs.items()}
    result = target(*plain_args, **plain_kwargs)
    if not _FUSING and name not in _ALLOCATIONS and (out is not None or not _is_view(result, plain_args)):
        COUNTS.launches[(name, where)] += 1
    if name == "matmul" and not _FUSING:  # what CuPy's matmul launches besides its GEMM
        hidden = _matmul_hidden_launches(*plain_args[:2])
        if hidden:
            COUNTS.launches[("matmul: CuPy's copies and pointer arrays", where)] += hidden
    if isinstance(out, ndarray):
        return out
    return _wrap(result)


def _matmul_hidden_launches(a: numpy.ndarray, b: numpy.ndarray) -> int:
    """The kernels CuPy 14's ``matmul`` (``cupy/_core/_routines_linalg.pyx``) launches besides the GEMM itself:
    with 2-D operands none (``dot``: cuBLAS takes a transposed operand as it is); above 2-D, a contiguous copy of
    each operand that is not C-contiguous, and, when an operand's batch axes are broadcast (an N-d array times a
    2-D or 1-D one, or batch axes of 1 against more), three elementwise kernels building pointer arrays for a
    ``gemmBatched`` of small GEMMs. The stand-in counts them as launches, as a GPU would run them."""
    a, b = numpy.asarray(a), numpy.asarray(b)
    if _builtins.max(a.ndim, b.ndim) <= 2:
        return 0
    copies = _builtins.sum(1 for x in (a, b) if x.ndim > 1 and not x.flags.c_contiguous)
    batch_a = a.shape[:-2] if a.ndim > 2 else ()
    batch_b = b.shape[:-2] if b.ndim > 2 else ()
    ndim = _builtins.max(len(batch_a), len(batch_b))
    batch_a, batch_b = (1,) * (ndim - len(batch_a)) + batch_a, (1,) * (ndim - len(batch_b)) + batch_b
    broadcast = _builtins.any((x == 1 and y > 1) or (y == 1 and x > 1) for x, y in zip(batch_a, batch_b, strict=True))
    return copies + (3 if broadcast else 0)


def _is_view(result: Any, inputs: tuple) -> bool:
    """Whether ``result`` is a view of an input (reshape, transpose, basic slicing: no kernel on a GPU)."""
    if not isinstance(result, numpy.ndarray) or result.base is None:
        return False
    sources = [a for a in inputs if isinstance(a, numpy.ndarray)]
    return _builtins.any(numpy.may_share_memory(result, a) for a in sources)


# ----------------------------------------------------------------------------------------------------------------
# The array


_NDARRAY = API["ndarray"]
_BINARY = {"add": "__add__", "subtract": "__sub__", "multiply": "__mul__", "true_divide": "__truediv__",
           "floor_divide": "__floordiv__", "power": "__pow__", "remainder": "__mod__", "matmul": "__matmul__",
           "less": "__lt__", "less_equal": "__le__", "greater": "__gt__", "greater_equal": "__ge__",
           "equal": "__eq__", "not_equal": "__ne__", "bitwise_and": "__and__", "bitwise_or": "__or__",
           "bitwise_xor": "__xor__", "right_shift": "__rshift__", "left_shift": "__lshift__"}


class ndarray:  # noqa: N801 - CuPy's name
    """A device array: a NumPy array that only CuPy's rules can reach."""

    __slots__ = ("_a",)
    __array_priority__ = 100  # NumPy defers its operators to ours (which then refuse NumPy arrays)

    def __init__(self, array: numpy.ndarray) -> None:
        object.__setattr__(self, "_a", array)

    # --- what CuPy refuses, and what it allows with a sync ---------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> numpy.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def _sync(self, what: str) -> None:
        COUNTS.syncs[(what, _caller())] += 1

    def __bool__(self) -> bool:
        self._sync("bool")
        return _builtins.bool(self._a)

    def __float__(self) -> float:
        self._sync("float")
        return float(self._a)

    def __int__(self) -> int:
        self._sync("int")
        return int(self._a)

    def __complex__(self) -> complex:
        self._sync("complex")
        return complex(self._a)

    def item(self, *args: Any) -> Any:
        self._sync("item")
        return self._a.item(*args)

    def tolist(self) -> Any:
        self._sync("tolist")
        return self._a.tolist()

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> numpy.ndarray:
        """The array on the host (a copy): a device -> host transfer, and a sync."""
        COUNTS.to_host[("get", _caller())] += 1
        if out is not None:
            out[...] = self._a
            return out
        return numpy.array(self._a, order=order)

    def __repr__(self) -> str:
        self._sync("repr")
        return f"array({numpy.array2string(self._a)}, device=standin)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._a)

    def __copy__(self) -> ndarray:  # copy.copy / copy.deepcopy: a device copy, as in CuPy
        COUNTS.calls[("ndarray.__copy__", _caller())] += 1
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo: dict) -> ndarray:
        return self.__copy__()

    def __iter__(self):
        return (ndarray(v) if isinstance(v, numpy.ndarray) else ndarray(numpy.asarray(v)) for v in self._a)

    # --- attributes ---------------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    base = property(lambda self: None if self._a.base is None else ndarray(numpy.asarray(self._a.base)))
    data = property(lambda self: SimpleNamespace(ptr=self._a.ctypes.data))  # a MemoryPointer's address

    @property
    def device(self) -> Any:
        return cuda.Device(0)

    def __getattr__(self, name: str) -> Any:
        spec = _NDARRAY.get(name)
        if spec is None or spec["kind"] != "method" or not hasattr(self._a, name):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (not in CuPy "
                                 f"{API['cupy_version']}'s ndarray)")
        method = getattr(self._a, name)
        # the array itself counts as an input (reshape, transpose ... of it are views, not kernels)
        return lambda *args, **kwargs: _call(f"ndarray.{name}", spec, lambda _self, *a, **k: method(*a, **k),
                                             (self, *args), kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "shape":
            self._a.shape = value
        else:
            raise AttributeError(f"cannot set {name!r} of a cupy.ndarray")

    # --- indexing -----------------------------------------------------------------------------------------------
    @staticmethod
    def _key(key: Any) -> Any:
        """Device index arrays unwrapped; a host index array is moved to the device first (counted), as CuPy does."""
        if isinstance(key, tuple):
            return tuple(ndarray._key(k) for k in key)
        if isinstance(key, ndarray):
            return key._a
        if isinstance(key, (numpy.ndarray, list)):
            COUNTS.to_device[("index", _caller())] += 1
            return numpy.asarray(key)
        return key

    def __getitem__(self, key: Any) -> ndarray:
        where = _caller()
        COUNTS.calls[("ndarray.__getitem__", where)] += 1
        result = self._a[self._key(key)]
        if not _is_view(result, (self._a,)):  # advanced indexing gathers: a kernel
            COUNTS.launches[("ndarray.__getitem__", where)] += 1
        return _wrap(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        COUNTS.calls[("ndarray.__setitem__", _caller())] += 1
        COUNTS.launches[("ndarray.__setitem__", _caller())] += 1
        if isinstance(value, numpy.ndarray):
            _refuse_host(value, "ndarray.__setitem__")
        self._a[self._key(key)] = value._a if isinstance(value, ndarray) else value

    # --- NumPy's protocols: np.<ufunc>(device) and np.<function>(device) dispatch to CuPy, as in CuPy -----------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if ufunc.__name__ not in _TOP or _TOP[ufunc.__name__]["kind"] != "ufunc":
            return NotImplemented
        target = getattr(ufunc, method)
        return _call(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__, None, target, inputs,
                     kwargs)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        name = func.__name__
        if name not in _TOP:
            raise TypeError(f"numpy.{name} on a device array: CuPy has no {name}")
        return _call(name, _TOP[name], func, args, kwargs)


def _operator(ufunc_name: str, dunder: str) -> None:
    ufunc = getattr(numpy, ufunc_name)

    def forward(self: ndarray, other: Any) -> Any:
        return _call(ufunc_name, None, ufunc, (self, other), {})

    def reverse(self: ndarray, other: Any) -> Any:
        return _call(ufunc_name, None, ufunc, (other, self), {})

    def in_place(self: ndarray, other: Any) -> ndarray:
        _call(ufunc_name, None, ufunc, (self, other), {"out": self})
        return self

    setattr(ndarray, dunder, forward)
    setattr(ndarray, dunder.replace("__", "__r", 1), reverse)
    setattr(ndarray, dunder.replace("__", "__i", 1), in_place)


for _name, _dunder in _BINARY.items():
    _operator(_name, _dunder)
for _dunder, _ufunc in [("__neg__", numpy.negative), ("__pos__", numpy.positive), ("__abs__", numpy.absolute),
                        ("__invert__", numpy.invert)]:
    setattr(ndarray, _dunder, lambda self, _u=_ufunc: _call(_u.__name__, None, _u, (self,), {}))


# ----------------------------------------------------------------------------------------------------------------
# The module's names: exactly the snapshot's, each backed by NumPy's function of that name


_TOP = API["modules"][""]


class ufunc:  # noqa: N801 - CuPy's name
    """A CuPy ufunc: called with device arrays (and scalars) only, keywords out, dtype, casting."""

    def __init__(self, name: str, spec: dict) -> None:
        self.__name__ = self.name = name
        self._np = getattr(numpy, name)
        self.nin, self.nout = spec["nin"], spec["nout"]
        self.nargs = self.nin + self.nout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _check_keywords(self.name, {"params": API["ufunc_keywords"], "var_keyword": False}, kwargs)
        return _call(self.name, None, self._np, args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return _call(f"{self.name}.reduce", None, self._np.reduce, args, kwargs)

    def __repr__(self) -> str:
        return f"<ufunc '{self.name}' (stand-in)>"


def _function(name: str, spec: dict) -> Any:
    target = getattr(numpy, name)

    def function(*args: Any, **kwargs: Any) -> Any:
        return _call(name, spec, target, args, kwargs)

    function.__name__ = function.__qualname__ = name
    return function


def asarray(a: Any, dtype: Any = None, order: Any = None, copy: Any = None, blocking: bool = False) -> ndarray:
    """A device array of ``a``: a host -> device copy unless ``a`` is already on the device."""
    COUNTS.calls[("asarray", _caller())] += 1
    if isinstance(a, ndarray):
        if dtype is None or numpy.dtype(dtype) == a.dtype:
            return a if not copy else ndarray(a._a.copy(order=order or "K"))
        return ndarray(a._a.astype(dtype, order=order or "K"))
    if isinstance(a, (list, tuple)) and _builtins.any(isinstance(v, ndarray) for v in a):
        raise ValueError("Unsupported dtype object: cupy.asarray of a list of device arrays (use cupy.stack)")
    COUNTS.to_device[("asarray", _caller())] += 1
    return ndarray(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False, ndmin: int = 0,
          blocking: bool = False) -> ndarray:
    result = asarray(obj, dtype=dtype, order=order, copy=copy)
    return ndarray(numpy.array(result._a, ndmin=ndmin, copy=False)) if ndmin else result


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> numpy.ndarray:
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


def get_array_module(*args: Any) -> ModuleType:
    return sys.modules[__name__] if _builtins.any(isinstance(a, ndarray) for a in args) else numpy


_OWN = {"ndarray", "ufunc", "asarray", "array", "asnumpy", "get_array_module", "cuda", "lib", "random", "linalg",
        "standin", "fuse"}
for _name, _spec in _TOP.items():
    if _name in _OWN or not hasattr(numpy, _name):
        continue  # names only CuPy has (e.g. ElementwiseKernel) are absent here: the project does not use them
    if _spec["kind"] == "ufunc" and isinstance(getattr(numpy, _name), numpy.ufunc):
        globals()[_name] = ufunc(_name, _spec)
    elif _spec["kind"] == "function" and callable(getattr(numpy, _name)):
        globals()[_name] = _function(_name, _spec)
    elif _spec["kind"] in ("type", "value"):
        globals()[_name] = getattr(numpy, _name)  # dtypes (cupy.float32 is numpy.float32), constants (pi, newaxis)


def fuse(*args: Any, kernel_name: str | None = None) -> Any:
    """``cupy.fuse``: the decorated function's elementwise operations as one kernel. Here it runs the function on
    the stand-in's arrays, counted as one call and one launch; only ufuncs and operators may appear inside (a
    routine, a reduction, indexing or a keyword is a TypeError), arguments are device arrays or scalars."""

    def decorate(fn: Any) -> Any:
        name = kernel_name or fn.__name__

        def fused(*call_args: Any) -> Any:
            if not _builtins.any(isinstance(a, ndarray) for a in call_args):
                raise TypeError(f"cupy.fuse({name}): no device array among the arguments")
            _unwrap(call_args, f"cupy.fuse({name})")  # host arrays refused, as everywhere
            where = _caller()
            _FUSING.append(name)
            try:
                result = fn(*call_args)
            finally:
                _FUSING.pop()
            COUNTS.calls[(f"fuse:{name}", where)] += 1
            COUNTS.launches[(f"fuse:{name}", where)] += 1
            return result

        fused.__name__ = name
        return fused

    if len(args) == 1 and callable(args[0]):
        return decorate(args[0])
    return decorate


def _submodule(path: str) -> ModuleType:
    module = ModuleType(f"cupy.{path}")
    source = numpy
    for part in path.split("."):
        source = getattr(source, part, None)
    for name, spec in API["modules"][path].items():
        if source is not None and spec["kind"] == "function" and callable(getattr(source, name, None)):
            target = getattr(source, name)
            setattr(module, name, (lambda t, n, s: lambda *a, **k: _call(n, s, t, a, k))(target, f"{path}.{name}",
                                                                                        spec))
    sys.modules[module.__name__] = module
    return module


lib = ModuleType("cupy.lib")
lib.stride_tricks = _submodule("lib.stride_tricks")
sys.modules["cupy.lib"] = lib
linalg = _submodule("linalg")
random = ModuleType("cupy.random")  # the project draws its random numbers on the host (or in array arithmetic)
sys.modules["cupy.random"] = random


# ----------------------------------------------------------------------------------------------------------------
# cupy.cuda: one device, no NCCL


class _Device:
    def __init__(self, index: int = 0) -> None:
        self.id = index

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        COUNTS.syncs[("synchronize", _caller())] += 1

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass


_pool = _MemoryPool()
cuda = ModuleType("cupy.cuda")
cuda.Device = _Device
cuda.runtime = SimpleNamespace(
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda index: {"name": b"CuPy stand-in (NumPy on the CPU)", "totalGlobalMem": 0},
    runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000)
cuda.get_current_stream = lambda: SimpleNamespace(ptr=0, synchronize=lambda: COUNTS.syncs.update(
    [(("stream.synchronize", _caller()))]))
class _NcclCommunicator:
    """NCCL of one rank (what one machine without a GPU can model): the in-place sum over one rank is the buffer."""

    def __init__(self, ranks: int, unique_id: Any, rank: int) -> None:
        if ranks != 1 or rank != 0:
            raise RuntimeError(f"the stand-in's NCCL has one rank, not {ranks}")

    def allReduce(self, send: int, receive: int, count: int, datatype: int, op: int, stream: int) -> None:  # noqa: N802
        COUNTS.calls[("nccl.allReduce", _caller())] += 1
        if send != receive or datatype not in (_nccl.NCCL_FLOAT32, _nccl.NCCL_FLOAT64) or op != _nccl.NCCL_SUM:
            raise ValueError("the stand-in's NCCL sums float32/float64 buffers in place only")


_nccl = SimpleNamespace(available=True, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, NcclCommunicator=_NcclCommunicator,
                        get_unique_id=lambda: b"standin", get_version=lambda: 22800)
cuda.nccl = _nccl
sys.modules["cupy.cuda"] = cuda
sys.modules["cupy.cuda.nccl"] = cuda.nccl  # type: ignore[assignment]
get_default_memory_pool = lambda: _pool  # noqa: E731


standin = SimpleNamespace(COUNTS=COUNTS, API=API, is_standin=True)
