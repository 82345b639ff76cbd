# %% [markdown]
# # Lesson 7 — The whole model: stem, N blocks, pool, head
#
# **You will learn** how the full MLP-Mixer is assembled, the backward of its two ends (the loss's gradient
# (p − y)/B derived, the head, the pool and the stem), how big the paper's models are (parameters and FLOPs,
# computed from shapes), and how one directional derivative checks every gradient of a real model at once.
#
# image (B, H, W, 3) → stem (B, S, C) → N Mixer blocks (B, S, C) → LayerNorm → mean over tokens (B, C) → head (B, K)

# %%
import numpy as np
from lesson_utils import pick, plt, print_reference, save_figure

import tinymixer as tm
from tinymixer import exercises
from tinymixer.nn import reference
from tinymixer.nn.gradcheck import check_gradients, directional_check, numerical_gradient, rel_error

# The whole model in the plain reference: five steps forward, the same five undone backward; then the loss.
print_reference(reference.mixer_forward, reference.mixer_backward,
                reference.softmax_cross_entropy_forward, reference.softmax_cross_entropy_backward)

model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=32, seed=0)
print(f"micro/4: {model.num_params():,} parameters, S = {model.num_tokens} tokens, "
      f"{model.flops_per_image() / 1e6:.1f} MFLOPs per image")
for name, value in list(model.params.items())[:16]:
    print(f"  {name:45s} {str(value.shape):14s}")
print("  ...")
images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
logits = model(images)
print("logits", logits.shape, "— all zero at initialisation, because the official head starts at zero:",
      float(np.abs(logits).max()))

# %% [markdown]
# ## The paper's sizes (Table 1)
# Parameter counts and forward FLOPs at 224 px, from shapes alone (no weights allocated).

# %%
rows = []
for name in ["S/32", "S/16", "B/32", "B/16", "L/32", "L/16", "H/14"]:
    d = tm.describe_size(name, num_classes=1000, image_size=224)
    rows.append((name, d["params_without_head"] / 1e6, d["flops"] / 1e9, d["num_tokens"]))
    print(f"  {name:5s} {d['params_without_head'] / 1e6:6.1f}M parameters (without head)  "
          f"{d['flops'] / 1e9:6.1f} GFLOPs/image  S = {d['num_tokens']}")
assert round(rows[3][1]) == 59 and tm.describe_size("B/16")["params"] == 59_880_472  # the official count

fig, ax = plt.subplots(figsize=(6, 4))
for name, params, gflops, _ in rows:
    ax.scatter(gflops, params)
    ax.annotate(name, (gflops, params), textcoords="offset points", xytext=(5, 3))
ax.margins(x=0.12, y=0.12)  # room for the labels of the corner points
ax.set(xscale="log", yscale="log", xlabel="GFLOPs per image (forward, 224 px)", ylabel="parameters (M)",
       title="MLP-Mixer sizes:\npatch size sets the compute, width the parameters")
ax.grid(alpha=0.3)
save_figure(fig, "07_sizes")

# %% [markdown]
# ## The ends of the network: the loss, the head, the pool and the stem
# Lessons 2–6 derived the middle. The backward pass starts at the loss. For one image with logits z, softmax
# $p_k = e^{z_k} / \sum_j e^{z_j}$ and true class y, the loss is $\ell = -\log p_y = -z_y + \log\sum_j e^{z_j}$, so
#
# $$\frac{\partial \ell}{\partial z_k} = -[k = y] + \frac{e^{z_k}}{\sum_j e^{z_j}} = p_k - [k = y],$$
#
# the predicted distribution minus the one-hot target; averaged over a batch of B images, $(p - y)/B$. (It is
# bounded by 1 per entry whatever the logits: the loss never hands the network an exploding gradient.) Then the
# head is a dense layer (lesson 2); the mean over the S tokens hands each token $1/S$ of its image's gradient; and
# the stem, a dense layer on the patches, hands each patch's gradient back to its pixels (`unpatchify`: no pixel
# is in two patches, so nothing is summed). Each, checked on its own by finite differences:

# %%
rng = np.random.default_rng(2)
z, true_class = 3 * rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
_, ce_cache = reference.softmax_cross_entropy_forward(z, true_class)
p = np.exp(z - z.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
by_hand = (p - np.eye(4)[true_class]) / len(true_class)  # (p - y) / B
gap = np.abs(by_hand - reference.softmax_cross_entropy_backward(1.0, ce_cache)).max()
print(f"(p - y) / B by hand against the reference's backward: {gap:.1e}")
ends = {
    "head (dense)": check_gradients(reference.dense_forward, reference.dense_backward,
                                    {"x": rng.standard_normal((5, 6)), "w": rng.standard_normal((6, 4)),
                                     "b": rng.standard_normal(4)}),
    "mean over tokens": check_gradients(reference.mean_pool_forward, reference.mean_pool_backward,
                                        {"x": rng.standard_normal((2, 9, 6))}),
    "stem (patches, dense)": check_gradients(reference.stem_forward, reference.stem_backward,
                                             {"images": rng.standard_normal((2, 6, 6, 3)),
                                              "kernel": rng.standard_normal((3, 3, 3, 6)),
                                              "bias": rng.standard_normal(6)}),
}
numerical = numerical_gradient(lambda: np.array(reference.softmax_cross_entropy_forward(z, true_class)[0]),
                               z)
ends["softmax cross-entropy"] = {"logits": rel_error(by_hand, numerical)}
for name, errors in ends.items():
    print(f"  {name:24s}", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(max(e.values()) for e in ends.values()) < 1e-7
assert gap < 1e-14

# %% [markdown]
# ## Checking every gradient of a real model at once
# Pick one random direction v over *all* parameters. The derivative of the loss along v, from four forward
# passes, must equal $\sum \nabla L \cdot v$ from one backward pass.

# %%
size = pick("tiny/4", "micro/4")
check = tm.MlpMixer.from_name(size, num_classes=10, image_size=32, dtype="float64", seed=1)
rng = np.random.default_rng(1)
for value in check.params.values():
    value[...] += 0.05 * rng.standard_normal(value.shape)
x, y = rng.uniform(-1, 1, (4, 32, 32, 3)), np.array([1, 2, 3, 4])
_, dlogits = tm.softmax_cross_entropy(check.forward(x), y)
check.backward(dlogits)
numerical, analytic, error = directional_check(lambda: tm.softmax_cross_entropy(check.forward(x), y)[0],
                                               check.params, check.grads)
print(f"{size} ({check.num_params():,} parameters): numerical {numerical:.12f}, analytic {analytic:.12f}, "
      f"relative error {error:.1e}")
assert error < 1e-9

# The library's network (sharded over the cores, fast layers) and the plain reference: the same logits and grads
ref_logits, ref_cache = reference.mixer_forward(x, dict(check.params))
_, ref_grads = reference.mixer_backward(dlogits, ref_cache)
print(f"library vs reference: logits {np.abs(check.forward(x) - ref_logits).max():.1e}, gradients "
      f"{max(np.abs(check.grads[k] - ref_grads[k]).max() for k in ref_grads):.1e} (largest differences)")

# %% [markdown]
# ## Your turn: softmax cross-entropy
# The loss and its gradient in one function. The third check uses logits of size ~1000: exp overflows unless you
# subtract each row's maximum first.

# %%
print(exercises.task("softmax_cross_entropy"))


def my_softmax_cross_entropy(logits, labels):
    raise NotImplementedError("your turn: return loss, dlogits")


print(exercises.check("softmax_cross_entropy", my_softmax_cross_entropy))

# %% [markdown]
# ## Exercises
# 1. Why does the zero-initialised head give exactly uniform predictions at the start, and why is the loss then
#    ln(10) ≈ 2.303?
# 2. From `describe_size`, how do the FLOPs of B/16 and B/32 compare, and their parameter counts? Explain both.
# 3. A directional check can miss a bug that is orthogonal to v. How likely is that for a random v? How would you
#    make the check stronger at little cost?
