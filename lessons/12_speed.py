# %% [markdown]
# # Lesson 12 — Speed: where the time of a training step goes
#
# **You will learn** to profile a training step by component and to compare its time with the arithmetic the
# step needs (FLOPs). Nearly all the *arithmetic* of a Mixer is in its matrix multiplies, which BLAS runs at a good
# fraction of the machine's peak; the elementwise work (GELU, LayerNorm) is a few percent of the FLOPs but makes
# several passes over large arrays each, so its share of the *time* can be far larger. Measure it.

# %%
import os
import time
from collections import defaultdict

import numpy as np
from lesson_utils import pick, plt, save_figure

import tinymixer as tm
from tinymixer import backend, chunks
from tinymixer.nn import blocks, layers
from tinymixer.nn import mixer as model_module

size_name, batch = pick("tiny/4", "micro/4"), pick(128, 32)
model = tm.MlpMixer.from_name(size_name, num_classes=10, image_size=32, seed=0)
optimizer = tm.SGD()
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
labels = rng.integers(0, 10, batch)


def step():
    logits = model.forward(images)
    loss, dlogits = tm.softmax_cross_entropy(logits, labels)
    model.backward(dlogits)
    tm.clip_by_global_norm(model.grads, 1.0)
    optimizer.step(model.params, model.grads, 0.01)
    backend.synchronize()  # on a GPU, wait for the queued work before reading the clock


step()  # warm-up: first-touch allocations
times = []
for _ in range(pick(5, 2)):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
seconds = float(np.median(times))
flops = 3 * model.flops_per_image() * batch  # forward + backward (about twice the forward)
print(f"{size_name}, batch {batch}: {1000 * seconds:.0f} ms per step, {batch / seconds:.0f} images/s, "
      f"{flops / seconds / 1e9:.1f} GFLOP/s of matrix multiplies, backend {tm.backend_name()}")

# %% [markdown]
# ## A profiler in a few lines
# Every layer is a plain function looked up by name at call time, so we can wrap each one with a timer.

# %%
spent = defaultdict(float)


def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        spent[name] += time.perf_counter() - start
        return result
    return wrapper


groups = {"dense (matrix multiplies)": ["dense_forward", "dense_backward"],  # the stem and head are dense too
          "GELU": ["gelu_forward", "gelu_backward"], "LayerNorm": ["layer_norm_forward", "layer_norm_backward"]}
originals = []
for group, names in groups.items():
    for name in names:
        for module in (blocks, model_module, layers):
            if hasattr(module, name):
                originals.append((module, name, getattr(module, name)))
                setattr(module, name, timed(group, getattr(module, name)))
steps = pick(3, 1)
# One shard: with several, the batch's shards run on several threads at once and their timers would overlap.
threads_setting = os.environ.get(chunks.THREADS_ENV)
os.environ[chunks.THREADS_ENV] = "1"
try:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - start) / steps
    spent = {name: value / steps for name, value in spent.items()}  # per step
finally:
    for module, name, function in originals:
        setattr(module, name, function)
    if threads_setting is None:
        del os.environ[chunks.THREADS_ENV]
    else:
        os.environ[chunks.THREADS_ENV] = threads_setting
spent["everything else (copies, residuals, optimiser)"] = total - sum(spent.values())
for name, value in sorted(spent.items(), key=lambda kv: -kv[1]):
    print(f"  {name:48s} {1000 * value:7.1f} ms  {100 * value / total:5.1f}%")
assert abs(sum(spent.values()) - total) < 1e-9

fig, ax = plt.subplots(figsize=(7, 3.5))
names = sorted(spent, key=spent.get)
ax.barh(names, [1000 * spent[n] for n in names])
ax.set(xlabel="ms per training step", title=f"{size_name}, batch {batch}, {tm.backend_name()}")
save_figure(fig, "12_time_per_component")

# %% [markdown]
# On the 2-core development machine (tiny/4, batch 128, one thread) this printed: matrix multiplies 69%, GELU 17%,
# LayerNorm 12%, the rest 2%. GELU and LayerNorm run in cache-sized blocks (`tinymixer/chunks.py`), GELU writes its
# result into its input's memory, and token mixing multiplies on the token axis without transposing the table;
# the first version spent 37% of a longer step in GELU and 19% in LayerNorm. With two cores, the batch is cut into
# two shards that go through the whole network on a thread each (`chunks.for_shards`), which made a two-thread
# step 25% faster than two-thread matrix multiplies on the whole batch.
#
# ## Which BLAS does the matrix multiplies?
# Two thirds of the step is the BLAS library's, so which library NumPy loaded matters as much as anything in this
# repository. NumPy's wheels bring OpenBLAS; PyTorch's bring Intel's MKL. On the development machine, the same
# tinymixer step with a NumPy built against MKL took 722 ms instead of 824 ms, and went from level with PyTorch to
# faster than it (README, "Performance"). `threadpoolctl` tells which library is loaded:

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
