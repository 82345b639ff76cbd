# %% [markdown]
# # Lesson 6 — The Mixer block: residuals, pre-LayerNorm, and a backward built from parts
#
# **You will learn** how one Mixer layer combines the pieces of lessons 2–5, how its backward pass is just its
# parts' backwards called in reverse order, and what the residual connections do for the gradient.
#
# $$U = X + \mathrm{TokenMixing}(\mathrm{LayerNorm}_0(X)),$$
# $$Y = U + \mathrm{ChannelMixing}(\mathrm{LayerNorm}_1(U)).$$

# %%
import numpy as np
from lesson_utils import plt, print_reference, save_figure
from matplotlib.ticker import MaxNLocator

import tinymixer as tm
from tinymixer import exercises
from tinymixer.nn import reference
from tinymixer.nn.blocks import mixer_block_backward, mixer_block_forward, prefixed
from tinymixer.nn.gradcheck import check_gradients

# The plain reference: the forward numbers its steps; the backward says which step each line undoes. (The
# library's block, nn/blocks.py, is the same function with dropout, stochastic depth and memory reuse added.)
print_reference(reference.mixer_block_forward, reference.mixer_block_backward)

# %% [markdown]
# ## The block's gradient check
# Twelve parameter tensors and the input, all checked at once against finite differences.

# %%
rng = np.random.default_rng(0)
S, C, D_S, D_C = 4, 6, 5, 7


def mlp(d, h):
    return {"Dense_0/kernel": rng.standard_normal((d, h)), "Dense_0/bias": rng.standard_normal(h),
            "Dense_1/kernel": rng.standard_normal((h, d)), "Dense_1/bias": rng.standard_normal(d)}


params = {"LayerNorm_0/scale": rng.standard_normal(C), "LayerNorm_0/bias": rng.standard_normal(C),
          "LayerNorm_1/scale": rng.standard_normal(C), "LayerNorm_1/bias": rng.standard_normal(C)}
params |= prefixed(mlp(S, D_S), "token_mixing") | prefixed(mlp(C, D_C), "channel_mixing")
errors = check_gradients(mixer_block_forward, mixer_block_backward, {"x": rng.standard_normal((2, S, C)),
                                                                     "params": params})
for name, error in errors.items():
    print(f"  {name:40s} {error:.1e}")
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## What the residuals do
# In a deep stack, the gradient reaching the early blocks passes through every later block. The residual path
# `y = u + branch(u)` adds an identity to each block's Jacobian, so the gradient's size cannot drift far from one
# block to the next. Measure it on a deep model at initialisation (head randomised so the loss depends on the
# blocks), with the residuals and without them: the same blocks with `u = x + ...` and `y = u + ...` removed,
# written here from the reference's pieces and swapped into the reference model for the second run.

# %%
def plain_block_forward(x, params, gelu="tanh"):  # the block without its two residual sums
    z, ln0 = reference.layer_norm_forward(x, params["LayerNorm_0/scale"], params["LayerNorm_0/bias"])
    u, token = reference.token_mixing_forward(z, reference.subtree(params, "token_mixing"), gelu)
    z, ln1 = reference.layer_norm_forward(u, params["LayerNorm_1/scale"], params["LayerNorm_1/bias"])
    y, channel = reference.channel_mixing_forward(z, reference.subtree(params, "channel_mixing"), gelu)
    return y, (ln0, token, ln1, channel)


def plain_block_backward(dout, cache):
    ln0, token, ln1, channel = cache
    dz, channel_grads = reference.channel_mixing_backward(dout, channel)
    du, dscale1, dbias1 = reference.layer_norm_backward(dz, ln1)
    dz, token_grads = reference.token_mixing_backward(du, token)
    dx, dscale0, dbias0 = reference.layer_norm_backward(dz, ln0)
    return dx, {"LayerNorm_0/scale": dscale0, "LayerNorm_0/bias": dbias0, "LayerNorm_1/scale": dscale1,
                "LayerNorm_1/bias": dbias1, **prefixed(token_grads, "token_mixing"),
                **prefixed(channel_grads, "channel_mixing")}


blocks = 12  # deep enough to see the drift; the reference model of this size takes a fraction of a second
model = tm.MlpMixer(num_classes=10, num_blocks=blocks, patch_size=4, hidden_dim=64, tokens_mlp_dim=32,
                    channels_mlp_dim=128, image_size=32, dtype="float64", seed=0)
model.params["head/kernel"][...] = 0.1 * rng.standard_normal(model.params["head/kernel"].shape)
images, labels = rng.uniform(-1, 1, (8, 32, 32, 3)), rng.integers(0, 10, 8)


def gradient_per_block():
    logits, cache = reference.mixer_forward(images, dict(model.params))
    _, ce = reference.softmax_cross_entropy_forward(logits, labels)
    _, grads = reference.mixer_backward(reference.softmax_cross_entropy_backward(1.0, ce), cache)
    return np.array([np.sqrt(sum((grads[f"MixerBlock_{i}/{k}"] ** 2).sum() for k in
                                 ["token_mixing/Dense_0/kernel", "channel_mixing/Dense_0/kernel"]))
                     for i in range(blocks)])


norms = {"with residuals": gradient_per_block()}
saved = reference.mixer_block_forward, reference.mixer_block_backward
reference.mixer_block_forward, reference.mixer_block_backward = plain_block_forward, plain_block_backward
try:
    norms["without"] = gradient_per_block()
finally:
    reference.mixer_block_forward, reference.mixer_block_backward = saved
spread = {name: float(g.max() / g.min()) for name, g in norms.items()}
for name, g in norms.items():
    print(f"{name:15s} gradient norm per block: {' '.join(f'{v:.2e}' for v in g)}  (largest / smallest "
          f"{spread[name]:.1f})")
assert 2 * spread["with residuals"] < spread["without"]  # the residuals keep the gradient's size level

fig, ax = plt.subplots(figsize=(7, 3.5))
for shift, (name, g) in zip((-0.2, 0.2), norms.items(), strict=True):
    ax.bar(np.arange(blocks) + shift, g, width=0.4, label=f"{name} (spread {spread[name]:.1f}x)")
ax.set(xlabel="block", ylabel="gradient norm (log)", yscale="log",
       title=f"gradient reaching each of {blocks} blocks, at initialisation")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.legend()
save_figure(fig, "06_gradient_per_block")

# %% [markdown]
# Without the residuals, every block's Jacobian multiplies the gradient on its way down, and the product drifts
# with depth (here it grows toward the first blocks: the LayerNorms rescale what passes through them); with them,
# each block adds to an identity path and the size stays nearly level from the last block to the first.

# %% [markdown]
# ## Your turn: the block's backward
# Compose it from the reference's layer backwards (`reference.channel_mixing_backward`,
# `reference.layer_norm_backward`, `reference.token_mixing_backward`): the exercise is the two residual paths.

# %%
print(exercises.task("mixer_block_backward"))


def my_mixer_block_backward(dout, cache):
    ln0, token, ln1, channel = cache
    raise NotImplementedError("your turn: return dx, grads")


print(exercises.check("mixer_block_backward", my_mixer_block_backward))

# %% [markdown]
# ## Exercises
# 1. In the backward, why is `du = dout + dz` needed after `layer_norm_backward`? What would be lost without it?
# 2. The token-mixing output bias adds one constant per token across all channels. In a whole model its gradient
#    is zero up to round-off (about 1e-16): show why with lesson 4's first exercise (a LayerNorm's output does not
#    change when a constant is added across its channels, and every path from this bias to the loss passes through
#    one). For the block alone, checked as above against a random upstream gradient, it is not zero: why not?
#    (The whole-model test in `tests/test_model.py` relies on the zero.)
# 3. Pre-LayerNorm vs post-LayerNorm: rewrite the block equations with LayerNorm after the residual addition. How
#    does the identity path of the gradient change?
