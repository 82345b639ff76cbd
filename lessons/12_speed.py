# %% [markdown]
# # Lesson 12 — Speed: where the time of a training step goes
#
# **You will learn** to profile a training step by component and to compare its time with the arithmetic the
# step needs (FLOPs). Nearly all the *arithmetic* of a Mixer is in its matrix multiplies, which BLAS runs at a good
# fraction of the machine's peak; the elementwise work (GELU, LayerNorm) is a few percent of the FLOPs but makes
# several passes over large arrays each, so its share of the *time* can be far larger. Measure it.

# %%
import contextlib
import os
import time
from collections import defaultdict

import numpy as np
from lesson_utils import pick, plt, save_figure
from threadpoolctl import threadpool_limits

import tinymixer as tm
from tinymixer import backend, chunks
from tinymixer.nn import blocks, layers, reference
from tinymixer.nn import mixer as model_module

size_name, batch = pick("tiny/4", "micro/4"), pick(128, 32)
model = tm.MlpMixer.from_name(size_name, num_classes=10, image_size=32, seed=0)
optimizer = tm.SGD()
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
labels = rng.integers(0, 10, batch)


def step(lr=0.01):
    logits = model.forward(images)
    loss, dlogits = tm.softmax_cross_entropy(logits, labels)
    model.backward(dlogits)
    tm.clip_by_global_norm(model.grads, 1.0)
    optimizer.step(model.params, model.grads, lr)
    backend.synchronize()  # on a GPU, wait for the queued work before reading the clock


REPEATS = pick(5, 2)


def median_time(function, repeats=REPEATS):
    """Seconds per call: one warm-up call (first-touch allocations, scratch buffers), then the median of a few."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@contextlib.contextmanager
def one_core():
    """Everything on one thread: the library's shards and row blocks, and the BLAS library's matrix multiplies."""
    saved = os.environ.get(chunks.THREADS_ENV)
    os.environ[chunks.THREADS_ENV] = "1"
    try:
        with threadpool_limits(1):
            yield
    finally:
        if saved is None:
            del os.environ[chunks.THREADS_ENV]
        else:
            os.environ[chunks.THREADS_ENV] = saved


seconds = median_time(step)
flops = 3 * model.flops_per_image() * batch  # forward + backward (about twice the forward)
print(f"{size_name}, batch {batch}: {1000 * seconds:.0f} ms per step on all cores ({chunks.num_threads()}), "
      f"{batch / seconds:.0f} images/s, {flops / seconds / 1e9:.1f} GFLOP/s of matrix multiplies, "
      f"backend {tm.backend_name()}")

# %% [markdown]
# ## From the reference to the fast step, one trick at a time
# `tinymixer/nn/reference.py` is the same model written to be read: no buffers reused, nothing in place, token
# mixing by transposes as the paper's code does. Start from it and swap in the library's fast pieces one at a time
# (the reference looks its layers up by name, so each swap is one assignment), on one core, and time the step
# after each swap: the measured gain of each trick on this machine. The logits stay the same throughout
# (float32 round-off apart), which the table shows too.

# %%
params = {name: value.copy() for name, value in model.params.items()}  # plain dicts: the per-parameter optimiser
reference_optimizer = tm.SGD()


def reference_step():
    logits, cache = reference.mixer_forward(images, params)
    loss, ce_cache = reference.softmax_cross_entropy_forward(logits, labels)
    _, grads = reference.mixer_backward(reference.softmax_cross_entropy_backward(1.0, ce_cache), cache)
    tm.clip_by_global_norm(grads, 1.0)
    reference_optimizer.step(params, grads, 0.0)  # lr 0: the weights stay, so every row computes the same logits
    return logits


fast_gelu = (lambda x: layers.gelu_forward(x, "tanh"), layers.gelu_backward)
swaps = [  # (what the row adds, {name in reference.py: the fast function})
    ("the plain reference (nn/reference.py)", {}),
    ("+ GELU: row blocks, the slope kept from the forward", {"GELU": {**reference.GELU, "tanh": fast_gelu}}),
    ("+ LayerNorm: means as matrix-vector products, row blocks",
     {"layer_norm_forward": layers.layer_norm_forward, "layer_norm_backward": layers.layer_norm_backward}),
    ("+ dense: one GEMM over all leading axes, bias sum as GEMV",
     {"dense_forward": layers.dense_forward, "dense_backward": layers.dense_backward}),
    ("+ token mixing on axis -2, no transposed copies",
     {"token_mixing_forward": blocks.token_mixing_forward, "token_mixing_backward": blocks.token_mixing_backward}),
    ("+ channel MLP: bias fused into GELU, memory reused",
     {"channel_mixing_forward": blocks.channel_mixing_forward,
      "channel_mixing_backward": blocks.channel_mixing_backward}),
    ("+ the block: residuals and LayerNorm backward in place",
     {"mixer_block_forward": blocks.mixer_block_forward, "mixer_block_backward": blocks.mixer_block_backward}),
]
rows, originals = [], {name: getattr(reference, name) for _, swap in swaps for name in swap}
expected = reference_step()
try:
    with one_core():
        for label, swap in swaps:
            for name, function in swap.items():  # cumulative: each row keeps the swaps above it
                setattr(reference, name, function)
            rows.append((label, median_time(reference_step), np.abs(reference_step() - expected).max()))
        rows.append(("the library's step: network, optimiser on one buffer", median_time(lambda: step(0.0)),
                     np.abs(model.forward(images) - expected).max()))
finally:
    for name, function in originals.items():
        setattr(reference, name, function)
rows.append((f"the same on all {chunks.num_threads()} cores: shards on threads", median_time(lambda: step(0.0)),
             np.abs(model.forward(images) - expected).max()))
print(f"{size_name}, batch {batch}, one core unless said:")
print(f"  {'':56s} {'ms/step':>8s} {'gain':>6s} {'vs reference':>13s} {'logits differ by':>17s}")
for i, (label, t, diff) in enumerate(rows):
    gain = rows[i - 1][1] / t if i else 1.0
    print(f"  {label:56s} {1000 * t:8.0f} {gain:5.2f}x {rows[0][1] / t:12.2f}x {diff:17.1e}")
assert all(diff < 1e-4 for *_, diff in rows)  # the same function all the way down

# %% [markdown]
# Read the table from the top: each row's gain is over the row above it. The elementwise layers gain most,
# because the reference makes several passes over arrays too large for the CPU's cache and the library makes
# fewer, in cache-sized blocks; the matrix multiplies were already BLAS calls in the reference, so rewriting
# around them gains little; the last row is the cores.

# %% [markdown]
# ## A profiler in a few lines
# Every layer is a plain function looked up by name at call time, so we can wrap each one with a timer. The
# profiled step is the library's on one core (as the table's second-last row), after a warm-up step.


# %%
spent = defaultdict(float)  # seconds per component


def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        spent[name] += time.perf_counter() - start
        return result
    return wrapper


groups = {"dense (matrix multiplies)": ["dense_forward", "dense_backward"],  # the stem and head are dense too
          "GELU": ["gelu_forward", "_gelu_bias_forward", "gelu_backward"],
          "LayerNorm": ["layer_norm_forward", "layer_norm_backward"]}
originals = []
for group, names in groups.items():
    for name in names:
        for module in (blocks, model_module, layers):
            if hasattr(module, name):
                originals.append((module, name, getattr(module, name)))
                setattr(module, name, timed(group, getattr(module, name)))
steps = pick(3, 1)
try:
    with one_core():  # one shard: with several, the shards' threads would run their timers at once
        step()  # warm-up, not counted
        spent.clear()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - start) / steps
    spent = {name: value / steps for name, value in spent.items()}  # per step
finally:
    for module, name, function in originals:
        setattr(module, name, function)
spent["everything else (copies, residuals, optimiser)"] = total - sum(spent.values())
print(f"profiled: {1000 * total:.0f} ms per step on one core (the table's one-core library step: "
      f"{1000 * rows[-2][1]:.0f} ms; on all cores: {1000 * seconds:.0f} ms)")
for name, value in sorted(spent.items(), key=lambda kv: -kv[1]):
    print(f"  {name:48s} {1000 * value:7.1f} ms  {100 * value / total:5.1f}%")
assert abs(sum(spent.values()) - total) < 1e-9

fig, ax = plt.subplots(figsize=(7, 3.5))
names = sorted(spent, key=spent.get)
ax.barh(names, [1000 * spent[n] for n in names])
ax.set(xlabel="ms per training step", title=f"{size_name}, batch {batch}, {tm.backend_name()}")
save_figure(fig, "12_time_per_component")

# %% [markdown]
# The matrix multiplies take most of a step's time, GELU and LayerNorm most of the rest (the shares above are this
# run's). GELU and LayerNorm run in cache-sized blocks (`tinymixer/chunks.py`), GELU writes its result into its
# input's memory, and token mixing multiplies on the token axis without transposing the table; the first version
# of the library spent 37% of a longer step in GELU and 19% in LayerNorm. With several cores, the batch is cut into
# one shard per core, each going through the whole network on its own thread (`chunks.for_shards`): the table's
# last row against the row above it.
#
# The library's own version of this profiler, with exclusive times (a function's time less that of the profiled
# functions it calls), every leaf layer of both families and the shards' threads, is a program:
# `python -m tinymixer.tools.profile --configs tiny/4 cnn-micro`. The benchmark uses it for its "floor" column: the
# matrix multiplies alone over PyTorch's whole step; and for its "fused" column: the step with each elementwise
# layer (GELU, LayerNorm) costing one pass over its arrays, as one compiled kernel per layer would. NumPy makes a
# pass per operation (GELU's formula is some fifteen of them), and the distance between the two columns is that.
#
# ## Which BLAS does the matrix multiplies?
# Half the step or more is the BLAS library's (two thirds at `tiny/4`'s size; the quick run's table above, on a
# smaller model, gives it less), so which library NumPy loaded matters as much as anything in this repository.
# NumPy's wheels bring OpenBLAS; PyTorch's bring Intel's MKL. On the development machine, the same tinymixer step
# with a NumPy built against MKL took 722 ms instead of 824 ms, and went from level with PyTorch to faster than it
# (README, "Performance"). `threadpoolctl` tells which library is loaded:

# %%
try:
    from threadpoolctl import threadpool_info

    for library in threadpool_info():
        if library["user_api"] == "blas":
            print(f"BLAS: {library['internal_api']} {library['version']}, {library['num_threads']} thread(s), "
                  f"{library.get('architecture') or library.get('threading_layer') or ''}")
except ImportError:
    print("pip install threadpoolctl to see which BLAS NumPy loaded")

# %% [markdown]
# ## NumPy and CuPy
# The same code runs on a GPU when CuPy is installed and a GPU is usable (`tm.set_backend("cupy")`).

# %%
cupy, why_not = backend._load_cupy()
print("CuPy:", "usable — rerun with TINYMIXER_BACKEND=cupy to compare" if cupy is not None else why_not)

# %% [markdown]
# ## Exercises
# 1. The dense share dominates. Compute the GFLOP/s of one large `x @ w` alone and compare with the step's.
# 2. Which elementwise operations could be fused to save passes over memory? Count the passes in `gelu_forward`.
# 3. Time `x @ w` for one channel-mixing shape ((B*S, C) @ (C, D_C)) with your NumPy and with PyTorch
#    (`torch.from_numpy(x) @ torch.from_numpy(w)`): the difference is the two BLAS libraries, not Python.
# 4. Set `TINYMIXER_THREADS=1` before starting Python and time a step on a multi-core machine: one shard, with
#    BLAS on all cores. How much slower is it, and which components scale with the cores, which don't?
