# %% [markdown]
# # Lesson 14 — Debugging a wrong gradient in a whole model
#
# **You will learn** what to do when a whole model's gradient check fails: read the tensors' errors in the order
# the backward visits them, find the first one that is wrong, check the layers between it and the last right one
# on their own, and recognise the classic bug of code that reuses memory.
#
# The rule behind it: a backward pass runs from the loss towards the input, so a bug in one layer spoils the
# gradient of every tensor the backward reaches *after* that layer — everything before it in the forward — and
# none of the tensors it reached before. The wrong tensors begin exactly where the bug is.

# %%
import numpy as np
from lesson_utils import plt, print_reference, save_figure

import tinymixer as tm
from tinymixer.nn import reference
from tinymixer.nn.gradcheck import check_gradients, directional_check

# %% [markdown]
# ## A planted bug
# LayerNorm's backward without its variance term — the mistake lesson 4's checker names first — put into the
# reference model in place of the right one. Every LayerNorm of the model now uses it.

# %%
right_layer_norm_backward = reference.layer_norm_backward


def buggy_layer_norm_backward(dout, cache):
    xc, r, xhat, scale = cache
    d = dout * scale
    dx = r * (d - d.mean(axis=-1, keepdims=True))  # the path through the variance is missing
    lead = tuple(range(dout.ndim - 1))
    return dx, (dout * xhat).sum(axis=lead), dout.sum(axis=lead)


rng = np.random.default_rng(0)
model = tm.MlpMixer(num_classes=4, num_blocks=2, patch_size=2, hidden_dim=6, tokens_mlp_dim=5, channels_mlp_dim=8,
                    image_size=4, dtype="float64", seed=0)
params = {name: 0.5 * rng.standard_normal(value.shape) for name, value in model.params.items()}
images, labels = rng.uniform(-1, 1, (3, 4, 4, 3)), np.array([0, 3, 1])


def loss_and_grads():
    logits, cache = reference.mixer_forward(images, params)
    loss, ce = reference.softmax_cross_entropy_forward(logits, labels)
    return loss, reference.mixer_backward(reference.softmax_cross_entropy_backward(1.0, ce), cache)[1]


def directional_error():
    _, grads = loss_and_grads()
    return directional_check(lambda: loss_and_grads()[0], params, grads)[2]


right = directional_error()
reference.layer_norm_backward = buggy_layer_norm_backward  # the bug goes in
wrong = directional_error()
print(f"whole-model directional check: right backward {right:.1e}, with the bug {wrong:.1e}")
assert right < 1e-8 < 1e-3 < wrong

# %% [markdown]
# The check says *that* something is wrong, not *where*. The model is small enough to check every tensor by finite
# differences; list them in the order the backward computes them (the head first, the stem and the images last).

# %%
errors = check_gradients(lambda images, params: reference.mixer_forward(images, params), reference.mixer_backward,
                         {"images": images, "params": params})
backward_order = ["params/head/kernel", "params/head/bias", "params/pre_head_layer_norm/scale",
                  "params/pre_head_layer_norm/bias"]
for i in reversed(range(model.num_blocks)):
    backward_order += [f"params/MixerBlock_{i}/{k}" for k in reversed(list(reference.subtree(params,
                                                                                              f"MixerBlock_{i}")))]
backward_order += ["params/stem/kernel", "params/stem/bias", "images"]
first_wrong = next(name for name in backward_order if errors[name] > 1e-6)
for name in backward_order:
    mark = "  <- the first wrong one" if name == first_wrong else ""
    print(f"  {name:52s} {errors[name]:8.1e}{mark}")
last_right = backward_order[backward_order.index(first_wrong) - 1]
print(f"right up to {last_right}; wrong from {first_wrong} on")
assert last_right == "params/pre_head_layer_norm/bias"  # what the text below reads off this list
assert first_wrong.startswith(f"params/MixerBlock_{model.num_blocks - 1}/channel_mixing/Dense_1/")

# %% [markdown]
# Between the last right tensor (the pre-head LayerNorm's bias) and the first wrong one (a parameter of the last
# block's channel-mixing output layer) the backward does two things: the pre-head LayerNorm's dx and the mean pool's
# backward. (The LayerNorm's own scale and bias come out right: the bug is only in dx.) Check those two layers on
# their own:

# %%
x = rng.standard_normal((2, 3, 6))
suspects = {
    "mean pool": check_gradients(reference.mean_pool_forward, reference.mean_pool_backward, {"x": x}),
    "LayerNorm": check_gradients(reference.layer_norm_forward, reference.layer_norm_backward,
                                 {"x": x, "scale": rng.standard_normal(6), "bias": rng.standard_normal(6)}),
}
for name, layer_errors in suspects.items():
    print(f"  {name:10s}", {k: f"{v:.1e}" for k, v in layer_errors.items()})
assert max(suspects["mean pool"].values()) < 1e-8 and suspects["LayerNorm"]["x"] > 1e-3
reference.layer_norm_backward = right_layer_norm_backward  # found and fixed
assert directional_error() < 1e-8
print("LayerNorm's dx is the bug; with the right backward back in place the whole model checks again")

# %%
order = np.arange(len(backward_order))
fig, ax = plt.subplots(figsize=(10, 3.8))
ax.bar(order, [max(errors[name], 1e-16) for name in backward_order],
       color=["tab:red" if errors[name] > 1e-6 else "tab:green" for name in backward_order])
ax.set(yscale="log", xlabel="tensor, in the order the backward computes them (head first, images last)",
       ylabel="relative error", title="one bug in LayerNorm's dx: every tensor the backward reaches after it is wrong")
ax.axhline(1e-6, ls=":", color="gray")
save_figure(fig, "14_errors_in_backward_order")

# %% [markdown]
# One bar after the bug can come out right by luck of the function: a token-mixing output bias, whose true gradient
# is 0 (lesson 6), reads ~0 from a wrong backward too. One right tensor among wrong ones proves nothing; the first
# wrong one in backward order is what locates the bug.

# %% [markdown]
# ## The bug of reused memory
# Fast code reuses memory: `u = y; u += x` adds in place instead of allocating `x + y`. Correct only if nothing
# else still needs `y` — and a forward keeps things for its backward. Here a residual branch `out = x + tanh(x W)`
# keeps `t = tanh(x W)` for its backward and then adds the residual into `t`'s memory:

# %%
def branch_forward_in_place(x, w):
    t = np.tanh(x @ w)  # (N, D)
    out = t
    out += x  # the residual, in t's memory: the cache's t is now x + tanh(x W)
    return out, (x, w, t)


def branch_forward(x, w):
    t = np.tanh(x @ w)
    return x + t, (x, w, t)  # a new array for the sum: t stays as the backward needs it


def branch_backward(dout, cache):
    x, w, t = cache
    dz = dout * (1 - t**2)  # tanh' = 1 - tanh^2: needs t itself
    return dout + dz @ w.T, x.T @ dz


inputs = {"x": rng.standard_normal((4, 5)), "w": 0.5 * rng.standard_normal((5, 5))}
in_place = check_gradients(branch_forward_in_place, branch_backward, inputs)
fresh = check_gradients(branch_forward, branch_backward, inputs)
print("in place:", {k: f"{v:.1e}" for k, v in in_place.items()}, "| a new array:",
      {k: f"{v:.1e}" for k, v in fresh.items()})
assert min(in_place.values()) > 1e-3 and max(fresh.values()) < 1e-8

# %% [markdown]
# The forward's output is right in both versions — only the backward, reading the overwritten cache, is wrong, so
# only a gradient check can see it. The library does this on purpose where nothing reads the memory afterwards
# (`blocks.mixer_block_forward`: `u = y; u += x`, where `y` is the branch output, which no backward needs) and keeps
# a plain version beside it that does not (`reference.mixer_block_forward`: `u = x + z`), held equal by
# `tests/test_reference.py`.

# %%
print_reference(reference.mixer_block_forward)

# %% [markdown]
# ## Exercises
# 1. Plant a different bug: put `reference.stem_backward` back with `dbias` averaged over the patches instead of
#    summed. Before running the check, say which tensors will be wrong (only the stem's bias: why is nothing after
#    it affected?), then run it.
# 2. A bug in `softmax_cross_entropy_backward` (forget the 1/B) spoils every tensor. Why does the error then have
#    the same size for all of them, and what does that size tell you?
# 3. Why is finite-difference checking every tensor possible here and not for Mixer-B/16? What do the directional
#    check (lesson 7) and the layer-by-layer checks give you instead?
