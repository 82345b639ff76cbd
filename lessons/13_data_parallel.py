# %% [markdown]
# # Lesson 13 — Data parallelism by hand: N processes, one gradient
#
# **You will learn** why adding up the gradients of N processes, each of which saw only its share of a batch, gives
# exactly the gradient that one process computes on the whole batch; how `tinymixer` does it with one all-reduce of
# one buffer per step; why averaging the processes' *mean* gradients is wrong when the shares are unequal; and how
# many bytes each step sends, which tells when adding processes stops paying.
#
# The loss of a batch of B images is a mean of per-image losses, $L = \frac{1}{B}\sum_{i=1}^{B} \ell_i$. Cut the
# batch into shards $b_1, \dots, b_N$, one per process (a *rank*). Rank r computes the gradient of its part of
# that mean, which is its shard's mean gradient times its share $|b_r|/B$:
#
# $$g_r = \frac{\partial}{\partial w}\,\frac{1}{B}\sum_{i \in b_r} \ell_i
#       = \frac{|b_r|}{B}\cdot\frac{\partial}{\partial w}\,\frac{1}{|b_r|}\sum_{i \in b_r} \ell_i .$$
#
# Differentiation is linear, so the ranks' sum is the whole batch's gradient,
#
# $$\sum_{r=1}^{N} g_r = \frac{\partial}{\partial w}\,\frac{1}{B}\sum_{r=1}^{N}\sum_{i \in b_r} \ell_i
#   = \frac{\partial L}{\partial w},$$
#
# exactly, for any split, even shards of unequal size. It needs one thing of the model: image i's loss
# $\ell_i$ depends on image i alone. Every Mixer layer treats the images of a batch independently (LayerNorm
# normalises each token over its channels, never over the batch), so this holds. After the sum every rank holds
# the same gradient and takes the same step, so the weights stay identical without ever being sent.
#
# The library's side of it: `shard_of` gives a rank its rows of the global batch, and `run_step` (the core
# `train_step` with a run's options around it) folds the share $|b_r|/B$ into dL/dlogits, then adds the ranks'
# gradients with one in-place all-reduce of `model.grad_buffer`, every gradient in one contiguous 1-D array
# (`model.grads` are views of it).

# %%
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
from lesson_utils import pick, plt, print_code, save_figure

import tinymixer as tm
from tinymixer.chunks import THREADS_ENV
from tinymixer.data import normalize, synthetic_shapes
from tinymixer.tools.bench_parallel import GLOBAL_BATCH, GPU_TFLOPS, LINKS, ring_allreduce_seconds, scaling_efficiency
from tinymixer.training.distributed import shard_of
from tinymixer.training.train import gradients, run_step, train_step

print_code(shard_of)
print_code(run_step)
print_code(gradients)  # where the share |b_r| / B (weight) multiplies dL/dlogits

# %% [markdown]
# ## Two and three ranks in one process
# One float64 model, and one copy of it per simulated rank: the same weights, as every rank holds after rank 0's
# weights are broadcast. The head is randomised (it starts at zero, which would stop the gradient reaching the
# blocks) so that every parameter gets a gradient worth comparing.

# %%
rng = np.random.default_rng(0)
model = tm.MlpMixer(num_classes=6, num_blocks=pick(4, 2), patch_size=4, hidden_dim=pick(64, 32), tokens_mlp_dim=16,
                    channels_mlp_dim=pick(256, 64), image_size=16, dtype="float64", seed=0)
model.params["head/kernel"][...] = 0.1 * rng.standard_normal(model.params["head/kernel"].shape)  # (C, 6)


def copy_of(original):
    """A new model with ``original``'s weights (its own buffers, so that the copies never share memory)."""
    twin = tm.MlpMixer(**original.config())
    for name, value in original.params.items():
        twin.params[name][...] = value
    return twin


B = 10
pixels, labels = synthetic_shapes(B, size=16, seed=0)  # (10, 16, 16, 3) uint8, (10,) in 0..5
images = normalize(pixels, "float64")  # (10, 16, 16, 3) in [-1, 1]

# The one-process gradient: the whole batch through one model.
loss, dlogits = tm.softmax_cross_entropy(model.forward(images), labels)  # scalar, (10, 6)
model.backward(dlogits)
reference = model.grad_buffer.copy()  # (P,): every gradient, end to end
is_view = np.shares_memory(model.grads["head/kernel"], model.grad_buffer)
print(f"{model.num_params():,} parameters; grad_buffer {model.grad_buffer.shape}; grads['head/kernel'] "
      f"{model.grads['head/kernel'].shape} is a view of it: {is_view}")
sizes = [value.size for value in model.params.values()]
names = list(model.params)


def tensors(buffer):
    """A gradient buffer (P,) cut back into its tensors, flattened, in ``params`` order."""
    return dict(zip(names, np.split(buffer, np.cumsum(sizes)[:-1]), strict=True))


def per_tensor_difference(buffer):
    """|buffer - reference| / |reference| of each tensor (Euclidean norms). Tensors whose true gradient is exactly
    zero (the token-mixing output bias, lesson 6 exercise 2) hold only round-off and are left out."""
    scale = np.linalg.norm(reference)
    return {name: np.linalg.norm(got - want) / np.linalg.norm(want)
            for (name, got), want in zip(tensors(buffer).items(), tensors(reference).values(), strict=True)
            if np.linalg.norm(want) > 1e-12 * scale}


def ranks_gradients(shards, weighted):
    """Each simulated rank's gradient buffer: its own model copy, forward and backward on its rows only.
    weighted: dL/dlogits times the share |b_r| / B (what run_step does); else the shard's plain mean."""
    buffers = []
    for rows in shards:
        rank_model = copy_of(model)
        _, rank_dlogits = tm.softmax_cross_entropy(rank_model.forward(images[rows]), labels[rows])  # (n_r, 6)
        share = (rows.stop - rows.start) / B if weighted else 1.0
        rank_model.backward(rank_dlogits * share)
        buffers.append(rank_model.grad_buffer.copy())  # (P,)
    return buffers


def contiguous(counts):
    """Slices of consecutive rows with the given counts, e.g. [7, 2, 1] -> rows 0:7, 7:9, 9:10."""
    bounds = np.cumsum([0, *counts])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


splits = {  # shard_of's splits (as equal as possible), and a deliberately lopsided one
    "2 ranks, shard_of": [shard_of(B, SimpleNamespace(rank=r, size=2)) for r in range(2)],
    "3 ranks, shard_of": [shard_of(B, SimpleNamespace(rank=r, size=3)) for r in range(3)],
    "3 ranks, lopsided": contiguous([7, 2, 1]),
}
print(f"\n{'split':18s} {'rows per rank':14s} {'sum of weighted':>16s} {'mean of means':>14s}")
results = {}
for name, shards in splits.items():
    right = ranks_gradients(shards, weighted=True)
    allreduced = right[0].copy()  # the all-reduce: add every rank's buffer, in rank order
    for buffer in right[1:]:
        allreduced += buffer
    means = ranks_gradients(shards, weighted=False)
    wrong = sum(means[1:], means[0].copy()) / len(shards)  # the tempting mistake: average the ranks' means
    results[name] = per_tensor_difference(allreduced), per_tensor_difference(wrong)
    counts = " + ".join(str(rows.stop - rows.start) for rows in shards)
    print(f"{name:18s} {counts:14s} {max(results[name][0].values()):16.1e} {max(results[name][1].values()):14.1e}")

# The weighted sum is the one-process gradient up to float64 rounding, for every split; the mean of means only
# when the shards are equal (then it is the same arithmetic).
assert all(max(right.values()) < 1e-12 for right, _ in results.values())
assert max(results["2 ranks, shard_of"][1].values()) < 1e-12
assert min(max(results[name][1].values()) for name in ["3 ranks, shard_of", "3 ranks, lopsided"]) > 1e-3

# %% [markdown]
# The columns are the largest, over the parameter tensors, of |gradient - one-process gradient| / |one-process
# gradient|. Adding the weighted gradients agrees to rounding (float64 keeps about 16 digits; the ranks add up
# the images in a different order than one process does). Averaging the ranks' means gives each *rank* the same
# weight, so on the lopsided split each of the 7 images of rank 0 counts 1/21 and the single image of rank 2
# counts 1/3, instead of 1/10 each: a different, wrong gradient. (Frameworks that average, like PyTorch's DDP,
# rely on equal shards.)

# %%
right, wrong = results["3 ranks, lopsided"]
positions = np.arange(len(right))  # one per parameter tensor, in params order
fig, ax = plt.subplots(figsize=(9, 3.5))
ax.semilogy(positions, list(wrong.values()), "o", label="mean of the ranks' mean gradients")
ax.semilogy(positions, list(right.values()), "o", label="sum of the ranks' weighted gradients")
ax.axhline(np.finfo(np.float64).eps, color="gray", linestyle=":", label="float64 rounding, 2.2e-16")
starts = {i: name.split("/")[0].replace("MixerBlock_", "block ") for i, name in enumerate(right)
          if name.startswith("stem/kernel") or name.endswith("LayerNorm_0/scale") or name.startswith("head/kernel")}
ax.set_xticks(list(starts), list(starts.values()))  # where the stem, each block and the head begin
ax.set(xlabel="parameter tensor, in forward order", ylabel="relative difference", ylim=(1e-17, 10),
       title="3 ranks with 7 + 2 + 1 images vs one process (float64)")
ax.legend(fontsize=8, loc="center right")
save_figure(fig, "13_gradient_difference")

# %% [markdown]
# ## Training: every rank takes the same steps
# Now `run_step` itself, the function `examples/cifar10.py` calls under `mpiexec`. The ranks are threads of
# this process, and a communicator of a few lines stands in for MPI: it offers what `run_step` uses of one
# (`size` and `allreduce_sum_`). Its all-reduce waits until every rank has its gradient, then each rank adds all
# of them up in rank order and writes the sum into its own buffer, so every rank gets the same bits, as from MPI.
# One process trains on the same global batches alongside; after a few steps of SGD with momentum and clipping
# the weights are compared.

# %%
class SimulatedRank:
    """Rank ``rank`` of ``size`` ranks that are threads of one process; ``shared`` holds their buffers and a
    barrier (with a timeout, so that a failing rank ends the others instead of leaving them waiting)."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def allreduce_sum_(self, buffer):
        self.shared.buffers[self.rank] = buffer
        self.shared.barrier.wait()  # every rank's gradient is in place
        total = self.shared.buffers[0].copy()  # (P,)
        for other in self.shared.buffers[1:]:
            total += other
        self.shared.barrier.wait()  # every rank has read every buffer before any is overwritten
        buffer[...] = total
        return buffer


N, steps, lr = 3, pick(6, 3), 0.1
shared = SimpleNamespace(buffers=[None] * N, barrier=threading.Barrier(N, timeout=60))
comms = [SimulatedRank(r, N, shared) for r in range(N)]
rows = [shard_of(B, comm) for comm in comms]  # 3 + 3 + 4 of each batch of 10
one_process, one_optimizer = copy_of(model), tm.SGD(momentum=0.9)
ranks = [copy_of(model) for _ in range(N)]
optimizers = [tm.SGD(momentum=0.9) for _ in range(N)]
pixels, labels = synthetic_shapes(steps * B, size=16, seed=1)  # (steps * 10, 16, 16, 3), a new batch each step
data = normalize(pixels, "float64")


def rank_step(r, batch, batch_labels):
    try:  # the loss returned is this rank's part of the batch's mean loss
        return float(run_step(ranks[r], optimizers[r], batch[rows[r]], batch_labels[rows[r]], lr,
                              comm=comms[r], global_batch=B)[0])
    except BaseException:
        shared.barrier.abort()  # the other ranks stop waiting for this one
        raise


# One thread per rank and no more (tinymixer would otherwise split each rank's work over the cores again), as
# mpiexec's processes each get their share of the cores (distributed.share_the_cores).
with ThreadPoolExecutor(max_workers=N) as pool:
    threads_setting = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = "1"
    try:
        for step in range(steps):
            batch, batch_labels = data[step * B:(step + 1) * B], labels[step * B:(step + 1) * B]  # (10, 16, 16, 3)
            loss, _ = train_step(one_process, one_optimizer, batch, batch_labels, lr)
            parts = list(pool.map(rank_step, range(N), [batch] * N, [batch_labels] * N))
            print(f"step {step + 1}: one process loss {float(loss):.6f}; {N} ranks "
                  f"{' + '.join(f'{part:.6f}' for part in parts)} = {sum(parts):.6f}")
    finally:
        if threads_setting is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = threads_setting

scale = max(float(np.abs(value).max()) for value in one_process.params.values())
difference = max(float(np.abs(ranks[0].params[k] - one_process.params[k]).max()) for k in one_process.params)
identical = all(np.array_equal(rank.params[k], ranks[0].params[k]) for rank in ranks[1:] for k in rank.params)
print(f"after {steps} steps: ranks vs one process, largest weight difference / largest weight "
      f"{difference / scale:.1e}; the {N} ranks' weights bit-identical: {identical}")
assert difference / scale < 1e-12 and identical

# %% [markdown]
# ## How much data moves, and when it stops paying
# Each step every rank contributes its whole gradient, 4 bytes per parameter P in float32, however small its share
# of the batch. MPI and NCCL do it with a *ring* all-reduce: the N ranks pass pieces around a ring, first adding
# (reduce-scatter) then handing out the sums (all-gather), so each rank's link carries $2\frac{N-1}{N}$ times the
# buffer, nearly twice it whatever N is, in $2(N-1)$ messages of latency $\lambda$ each:
#
# $$t_\text{all-reduce} = 2\,\frac{N-1}{N}\cdot\frac{4P}{\text{bandwidth}} + 2(N-1)\,\lambda.$$
#
# `tinymixer.tools.bench_parallel` holds this cost model (and `python -m tinymixer.tools.bench_parallel` measures
# the real thing on this machine's cores under `mpiexec`).

# %%
print_code(ring_allreduce_seconds)
links = {name: LINKS[name] for name in ["10 GbE", "100 Gb InfiniBand"]}  # (bytes/s, latency s): nominal rates
print(f"links: {', '.join(f'{name} {rate / 1e9:g} GB/s' for name, (rate, _) in links.items())}\n")

SHOWN = {"tiny/4": (32, 10), "small/4": (32, 10), "B/16": (224, 1000), "L/16": (224, 1000), "H/14": (224, 1000)}
print(f"{'':35s}ring all-reduce over 8 processes")
print(f"{'size':8s} {'parameters':>12s} {'MB per step':>12s}  " + "  ".join(f"{link + ' (ms)':>22s}" for link in links))
for name, (image_size, classes) in SHOWN.items():
    params = tm.describe_size(name, num_classes=classes, image_size=image_size)["params"]
    nbytes = 4 * params  # float32 gradients
    print(f"{name:8s} {params:12,d} {nbytes / 1e6:12.1f}  " + "  ".join(
        f"{1000 * ring_allreduce_seconds(nbytes, 8, *link):22.1f}" for link in links.values()))
assert tm.describe_size("tiny/4", num_classes=10, image_size=32)["params"] == tm.MlpMixer.from_name(
    "tiny/4", num_classes=10, image_size=32).num_params()  # describe_size counts what the model allocates

# %% [markdown]
# Whether that is a lot depends on the compute beside it. Measure one float32 training step here, then
# predict the *scaling efficiency* (speed-up divided by N) for a fixed global batch B: each rank computes B/N
# images, then waits for the all-reduce (tinymixer starts it after the whole backward, so nothing overlaps):
#
# $$\text{efficiency}(N) = \frac{t_\text{compute}(B/N)}{t_\text{compute}(B/N) + t_\text{all-reduce}(N)}.$$
#
# This is a model, not a measurement of many machines: the compute time per image of each size is a rate (this
# machine's, measured on the step's matrix multiplies; or an assumed GPU's) applied to the size's FLOPs, and the
# links run at their nominal rates, which real all-reduces do not reach, so the curves are upper bounds.

# %%
print_code(scaling_efficiency)
measured_name, batch = pick("tiny/4", "micro/4"), pick(64, 16)
timed_model = tm.MlpMixer.from_name(measured_name, num_classes=10, image_size=32, seed=0)
timed_optimizer = tm.SGD(momentum=0.9)
timed_images = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)  # (batch, 32, 32, 3)
timed_labels = rng.integers(0, 10, batch)  # (batch,)
train_step(timed_model, timed_optimizer, timed_images, timed_labels, 0.01)  # warm-up: first-touch allocations
seconds = []
for _ in range(pick(3, 2)):
    start = time.perf_counter()
    train_step(timed_model, timed_optimizer, timed_images, timed_labels, 0.01)
    tm.synchronize()  # on a GPU, wait for the queued work before reading the clock
    seconds.append(time.perf_counter() - start)
step_seconds = float(np.median(seconds))
flops_per_second = 3 * timed_model.flops_per_image() * batch / step_seconds  # forward + backward: ~3 forwards
print(f"measured: {measured_name}, batch {batch}: {1000 * step_seconds:.0f} ms per step, "
      f"{flops_per_second / 1e9:.1f} GFLOP/s ({tm.backend_name()})\n")

# Global batches: examples/cifar10.py's default for tiny/4, the paper's pre-training batch for B/16.
predicted = {"tiny/4": (32, 10, 128), "B/16": (224, 1000, GLOBAL_BATCH)}  # image size, classes, global batch
rates = {f"this machine, measured: {flops_per_second / 1e9:.0f} GFLOP/s": flops_per_second,
         f"a GPU, assumed: {GPU_TFLOPS:.0f} TFLOP/s": GPU_TFLOPS * 1e12}
processes = 2 ** np.arange(10)  # 1, 2, 4, ..., 512
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, (rate_name, rate) in zip(axes, rates.items(), strict=True):
    print(f"compute at {rate_name}; predicted efficiency on N processes:")
    for name, (image_size, classes, global_batch) in predicted.items():
        described = tm.describe_size(name, num_classes=classes, image_size=image_size)
        per_image = 3 * described["flops"] / rate  # seconds of one image's forward + backward
        nbytes = 4 * described["params"]
        usable = processes[processes <= global_batch]  # at least one image per rank
        one = global_batch * per_image  # a step's compute on one process
        print(f"  {name}, batch {global_batch}: one process computes a step in "
              f"{f'{one:.3g} s' if one < 1000 else f'{one / 3600:.1f} hours'}")
        for (link, (bandwidth, latency)), style in zip(links.items(), ["--", "-"], strict=True):
            efficiency = [scaling_efficiency(per_image, global_batch, n, nbytes, bandwidth, latency) for n in usable]
            ax.plot(usable, efficiency, style, marker="o", markersize=3, label=f"{name}, batch {global_batch}, {link}")
            shown = ", ".join(f"N={n} {100 * e:.0f}%" for n, e in zip(usable, efficiency, strict=True)
                              if n in (2, 8, 64, 512))
            print(f"    {link:17s}: {shown}")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="processes N", title=f"compute at {rate_name}", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
axes[0].set_ylabel("predicted speed-up / N")
axes[1].legend(fontsize=8)
fig.suptitle("a cost model, not a measurement: ring all-reduce at nominal link rates, no overlap")
save_figure(fig, "13_scaling_model")

# %% [markdown]
# A Mixer's FLOPs per parameter grow with its tokens and its width (each token-mixing weight is used once per channel,
# each channel-mixing weight once per token), so B/16, with 196 tokens of 768 channels, computes far more per byte
# of gradient than tiny/4 with 64 of 128, and its batch is 32 times larger. At this CPU's speed the all-reduce
# is small beside the compute (it waits after the backward; it is not hidden) except for tiny/4 on tens of
# processes over 10 GbE. A GPU computes over a thousand
# times faster while the bytes stay the same, and then only the large model on the fast link keeps most of a few
# dozen processes busy. That is why GPU clusters need fast links, and why frameworks such as PyTorch's DDP overlap
# the all-reduce with the backward, in buckets, layer by layer.
#
# ## Running it for real
# `tinymixer.training.distributed` uses MPI through mpi4py (NCCL for GPU arrays). Install the extra, which brings
# mpi4py and the MPICH wheel with its own `mpiexec`, and start the same script N times:
#
# ```bash
# pip install -e ".[mpi]"
# mpiexec -n 2 python examples/cifar10.py --out runs/two-ranks   # --batch-size stays the global batch
# ```
#
# Every rank loads the data and builds the same model (rank 0's weights are broadcast to make sure), takes its
# rows of every global batch (`shard_of`), and all-reduces the gradient buffer in `run_step`; rank 0 alone prints
# and writes the run folder. On one machine the processes share its cores (`distributed.share_the_cores` gives each
# its part), so they do the work one process with all the threads would do: the point is several machines, or one
# GPU per process (`python -m tinymixer.tools.bench_parallel` times both layouts on your machine).
# `tests/test_distributed.py` runs `mpiexec -n 2` and `-n 3` and checks, as this lesson did, that the
# weights equal one process's in float64 up to rounding.
#
# ## Exercises
# 1. Show that the mean of the ranks' means on the 7 + 2 + 1 split is the exact gradient of another loss, a
#    weighted mean of the $\ell_i$ (image weights 1/21, 1/6 and 1/3). Check it: backpropagate that loss's
#    dL/dlogits through one model and compare with `wrong`. When are the two losses the same?
# 2. Gradient accumulation is data parallelism in time: one model runs the shards one after another, each with
#    dL/dlogits times $|b_r|/B$, and adds its `grad_buffer` after each backward before one optimiser step.
#    Write it for a batch of 10 in shards 3 + 3 + 4 and compare with the one-process gradient as above.
# 3. Overlap: if the all-reduce ran during the backward (about two thirds of a step's compute), a step would take
#    $t_\text{compute} + \max(0,\ t_\text{all-reduce} - \tfrac{2}{3}t_\text{compute})$. Redo the GPU panel with
#    it, and with `LINKS["NVLink (H100, 450 GB/s)"]`. Where does overlap help most, and where can it not help?
