"""Where a training step's time goes, operation by operation, and what its matrix multiplies alone cost.

    python -m tinymixer.tools.profile                                  # tiny/4 and cnn-micro, batch 128, one core
    python -m tinymixer.tools.profile --configs small/4 --threads 2

Every layer of tinymixer is a plain function looked up by name when it is called, so the profiler wraps each
leaf operation below with a timer, in every tinymixer module that holds it, runs a few training steps (SGD with
momentum, clipping at 1, as the benchmark's), and puts the functions back. Times are **exclusive**: a function's
own time, less that of the profiled functions it calls (so a convolution's windows, ``im2col``, are counted apart
from its matrix multiplies). With several threads each shard's thread runs its own timers at once while the
calling thread waits for them; the table shows the calling thread's rows (what runs before and after the shards:
the optimiser, clipping) plus one shard's (the shards' threads' time over the number of shards), and "the rest" is
the step less those rows (with it, the time the caller waited for the slowest shard).

The GEMM rows (the dense layers' and the convolutions' own time: matrix multiplies and their bias sums, which
are BLAS matrix-vector products too, and the few small reshapes, sums and allocations around them) are the
step's **matrix multiplies as they run inside it**, operands cold from memory. No implementation of the same
arithmetic on the same BLAS library runs much faster than them, so ``GEMMs alone / PyTorch's step`` is the floor
of the benchmark's ratio, to within a few percent (``tools/bench.py`` prints it).

A second floor, for the elementwise layers (GELU, LayerNorm, GroupNorm, dropout): NumPy runs one pass over memory
per operation, so a layer of ten operations reads its arrays ten times; a compiled, fused kernel would read them
once. The table's last line is the step with every elementwise call replaced by **one pass over its arrays** (a
NumPy add of two arrays of the call's size into a third, timed here): what the step would take if each of those
layers were a single fused kernel, everything else as measured. It bounds what rewriting their NumPy can win.
CPU only (NumPy): on a GPU the calls are asynchronous and the timers would measure launches.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# The leaf operations, by the module that defines them, and the row of the table each one's time goes to.
GEMM_ROWS = ("GEMMs, forward", "GEMMs, backward")
OPERATIONS: dict[str, dict[str, str]] = {
    "tinymixer.nn.layers": {
        "dense_forward": GEMM_ROWS[0], "dense_backward": GEMM_ROWS[1],
        "gelu_forward": "GELU forward", "_gelu_bias_forward": "GELU forward", "gelu_backward": "GELU backward",
        "layer_norm_forward": "LayerNorm forward", "layer_norm_backward": "LayerNorm backward",
        "group_norm_forward": "GroupNorm (+ ReLU) forward", "group_norm_relu_forward": "GroupNorm (+ ReLU) forward",
        "relu_forward": "GroupNorm (+ ReLU) forward",
        "group_norm_backward": "GroupNorm (+ ReLU) backward",
        "group_norm_relu_backward": "GroupNorm (+ ReLU) backward", "relu_backward": "GroupNorm (+ ReLU) backward",
        "dropout_forward": "dropout, stochastic depth", "dropout_backward": "dropout, stochastic depth",
        "stochastic_depth_forward": "dropout, stochastic depth",
        "stochastic_depth_backward": "dropout, stochastic depth",
        "mean_pool_forward": "loss, mean pool", "mean_pool_backward": "loss, mean pool",
        "softmax_cross_entropy": "loss, mean pool",
    },
    "tinymixer.nn.conv": {
        "conv2d_forward": GEMM_ROWS[0], "conv2d_backward": GEMM_ROWS[1],  # their own time: the GEMMs
        "im2col": "windows (im2col)", "col2im": "windows' gradients (col2im)",
    },
    "tinymixer.training.train": {"update": "optimiser and clipping"},
}
REST = "the rest (residual sums, copies, the gradient buffer, Python)"
# The rows of elementwise layers, each of whose calls a fused kernel would do in one pass (the one-pass floor)
ELEMENTWISE_ROWS = ("GELU forward", "GELU backward", "LayerNorm forward", "LayerNorm backward",
                    "GroupNorm (+ ReLU) forward", "GroupNorm (+ ReLU) backward", "dropout, stochastic depth")


class _Timers:
    """Exclusive seconds per row, per thread: each thread keeps a stack of its open calls' child time."""

    def __init__(self) -> None:
        self.spent: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.calls: dict[int, list[tuple[str, tuple, str]]] = defaultdict(list)  # elementwise calls: row, shape, dtype
        self.local = threading.local()

    def wrap(self, row: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # time spent in profiled calls made from this one
            if row in ELEMENTWISE_ROWS:  # its first argument is the array it works through (x, or dout)
                self.calls[threading.get_ident()].append((row, args[0].shape, args[0].dtype.str))
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = stack.pop()
                self.spent[threading.get_ident()][row] += elapsed - children
                if stack:
                    stack[-1] += elapsed

        timed.__wrapped__ = function  # type: ignore[attr-defined]
        timed._profiler_timer = True  # type: ignore[attr-defined]
        return timed

    def critical_path(self, caller: int, shards: int) -> tuple[dict[str, float], list[tuple[str, tuple, str, float]]]:
        """The rows of the thread ``caller`` (which ran the steps: what comes before and after the shards) plus one
        shard's: the other threads' rows summed and divided by ``shards`` (the batch's shards are equal parts, and
        a pool thread may run more than one of a step's shards, so no one thread's rows are a shard's). The
        elementwise calls likewise, each with its share: 1 for the caller's, 1 / shards for the shards' threads'."""
        rows: dict[str, float] = defaultdict(float)
        calls: list[tuple[str, tuple, str, float]] = []
        for thread, spent in self.spent.items():
            share = 1.0 if thread == caller else 1.0 / shards
            for row, seconds in spent.items():
                rows[row] += share * seconds
            calls += [(*call, share) for call in self.calls.get(thread, [])]
        return dict(rows), calls

_active = threading.Lock()  # one profile at a time: a second one's wrappers would hide the first's


@contextmanager
def _wrapped(timers: _Timers) -> Iterator[None]:
    """Every profiled function replaced by its timed version in every loaded tinymixer module, then restored --
    also where a module picked up a timed version while profiling (the ``tinymixer`` facade keeps the names it
    looks up, a module first imported meanwhile binds what it imports)."""
    import importlib

    if not _active.acquire(blocking=False):
        raise RuntimeError("profile_step is already running (in this or another thread): profiles do not nest")
    replaced = []
    try:
        originals = {}
        for module_name, functions in OPERATIONS.items():
            module = importlib.import_module(module_name)
            for name, row in functions.items():
                originals[id(getattr(module, name))] = (getattr(module, name), row)
        for module in _tinymixer_modules():
            for name, value in list(vars(module).items()):
                if callable(value) and id(value) in originals and originals[id(value)][0] is value:
                    function, row = originals[id(value)]
                    setattr(module, name, timers.wrap(row, function))
                    replaced.append((module, name, function))
        yield
    finally:
        for module, name, function in replaced:
            setattr(module, name, function)
        for module in _tinymixer_modules():
            for name, value in list(vars(module).items()):
                if isinstance(value, types.FunctionType) and getattr(value, "_profiler_timer", False):
                    setattr(module, name, value.__wrapped__)  # picked up while profiling: the function itself
        _active.release()


def _tinymixer_modules() -> list[Any]:
    return [m for n, m in list(sys.modules.items()) if n.startswith("tinymixer") and m is not None]


def profile_step(step: Callable[[], Any], steps: int = 3, calls: list | None = None, shards: int = 1
                 ) -> dict[str, float]:
    """Milliseconds per step of each row (the calling thread's and one shard's, of the ``shards`` the step cuts its
    batch into; the rows sum to the step), after one warm-up step. ``step()`` runs one training step on NumPy
    arrays. ``calls``: a list to which the elementwise calls of one step are added, as (row, shape, dtype,
    share) (for ``one_pass_ms``)."""
    timers = _Timers()
    with _wrapped(timers):
        step()  # warm-up: first-call allocations, the gradient buffer
        timers.spent.clear()
        timers.calls.clear()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - start
    spent, recorded = timers.critical_path(threading.get_ident(), shards)
    rows = {row: 1000 * seconds / steps for row, seconds in spent.items()}
    rows[REST] = 1000 * total / steps - sum(rows.values())
    rows["step"] = 1000 * total / steps
    if calls is not None:  # every step makes the same calls: one step's
        calls.extend((row, shape, dtype, share / steps) for row, shape, dtype, share in recorded)
    return rows


def one_pass_ms(calls: list[tuple[str, tuple, str, float]], repeats: int = 5) -> dict[str, float]:
    """Milliseconds, per elementwise row, of one pass over each call's arrays: a NumPy add of two arrays of the
    call's shape and dtype into a third (read two, write one: the least a fused kernel of a layer moves, as
    GELU's backward does), the best of ``repeats``, summed over the calls with their shares. The lower bound of
    those layers' time with fused kernels (their arithmetic, such as GELU's tanh, not counted)."""
    import numpy as np

    counts: dict[tuple[str, tuple, str], float] = defaultdict(float)
    for row, shape, dtype, share in calls:
        counts[row, shape, dtype] += share
    times: dict[tuple, float] = {}
    result: dict[str, float] = defaultdict(float)
    for (row, shape, dtype), count in counts.items():
        if (shape, dtype) not in times:
            a, b, c = (np.ones(shape, dtype) for _ in range(3))
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                np.add(a, b, out=c)
                best = min(best, time.perf_counter() - start)
            times[shape, dtype] = best
        result[row] += 1000 * count * times[shape, dtype]
    return dict(result)


def gemm_ms(rows: dict[str, float]) -> float:
    """The GEMM rows' sum: the step's matrix multiplies, as they run in it."""
    return sum(rows.get(row, 0.0) for row in GEMM_ROWS)


def training_step(config: str, batch_size: int = 128, image_size: int = 32, seed: int = 0) -> Callable[[], Any]:
    """One training step of ``config`` (SGD with momentum 0.9, clipping at 1: the benchmark's) as a function."""
    import numpy as np

    import tinymixer as tm
    from tinymixer.nn.architectures import make_model
    from tinymixer.training.train import train_step

    model = make_model(config, num_classes=10, image_size=image_size, seed=seed)
    if model.xp is not np:
        raise SystemExit("the profiler times NumPy steps (on a GPU its timers would measure kernel launches): "
                         "run it with --backend numpy or TINYMIXER_BACKEND=numpy")
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    optimizer = tm.SGD(momentum=0.9)
    return lambda: train_step(model, optimizer, images, labels, lr=1e-3, clip=1.0)


def fused_step_ms(rows: dict[str, float], one_pass: dict[str, float]) -> float:
    """The step with each elementwise layer's time replaced by its one pass (``one_pass_ms``), all else as it ran."""
    return rows["step"] - sum(rows.get(row, 0.0) for row in one_pass) + sum(one_pass.values())


def format_rows(config: str, rows: dict[str, float], one_pass: dict[str, float] | None = None) -> str:
    step = rows["step"]
    lines = [f"{config}: {step:.0f} ms per step", "| operation | ms | share |", "|---|---|---|"]
    for row, ms in sorted(((r, v) for r, v in rows.items() if r != "step"), key=lambda kv: -kv[1]):
        lines.append(f"| {row} | {ms:.0f} | {100 * ms / step:.0f}% |")
    lines.append(f"| **GEMMs alone** | {gemm_ms(rows):.0f} | {100 * gemm_ms(rows) / step:.0f}% |")
    if one_pass:
        passes, fused = sum(one_pass.values()), fused_step_ms(rows, one_pass)
        measured = sum(rows.get(row, 0.0) for row in one_pass)
        lines.append(f"| **elementwise layers at one pass each** (measured: {measured:.0f}) | {passes:.0f} | "
                     f"{100 * passes / step:.0f}% |")
        lines.append(f"| **the step with them fused** | {fused:.0f} | {100 * fused / step:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..util.host import tune_host

    tune_host()
    from ..nn.architectures import MODEL_NAMES

    parser = argparse.ArgumentParser(prog="python -m tinymixer.tools.profile", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny/4", "cnn-micro"], choices=MODEL_NAMES,
                        metavar="SIZE", help=f"model sizes to profile, of: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--image-size", type=int, default=32, help="height and width of the (random) images")
    parser.add_argument("--threads", type=int, default=1, help="threads (shards, BLAS) of the step")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after one warm-up step")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.batch_size < 1 or args.image_size < 1:
        parser.error("--threads, --steps, --batch-size and --image-size must be at least 1")
    import os

    os.environ["TINYMIXER_THREADS"] = str(args.threads)
    from threadpoolctl import threadpool_limits

    from ..chunks import batch_shards

    with threadpool_limits(args.threads):
        for config in args.configs:
            try:
                step = training_step(config, args.batch_size, args.image_size)
            except ValueError as error:  # a size the model cannot take (a patch size that does not divide it)
                parser.error(f"{config} at --image-size {args.image_size}: {error}")
            calls: list = []
            rows = profile_step(step, args.steps, calls, shards=len(batch_shards(args.batch_size)))
            print(format_rows(f"{config}, batch {args.batch_size}, {args.threads} thread(s)", rows,
                              one_pass_ms(calls)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
