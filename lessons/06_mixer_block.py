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
from lesson_utils import pick, plt, print_reference, save_figure

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
# `y = u + branch(u)` adds an identity to each block's Jacobian, so the gradient cannot vanish on the way down.
# Measure it on a 12-block model at initialisation (head randomised so the loss depends on the blocks).

# %%
blocks = pick(12, 4)
model = tm.MlpMixer(num_classes=10, num_blocks=blocks, patch_size=4, hidden_dim=64, tokens_mlp_dim=32,
                    channels_mlp_dim=128, image_size=32, dtype="float64", seed=0)
model.params["head/kernel"][...] = 0.1 * rng.standard_normal(model.params["head/kernel"].shape)
images = rng.uniform(-1, 1, (8, 32, 32, 3))
loss, dlogits = tm.softmax_cross_entropy(model.forward(images), rng.integers(0, 10, 8))
model.backward(dlogits)
grad_norms = [np.sqrt(sum((model.grads[f"MixerBlock_{i}/{k}"] ** 2).sum() for k in
                          ["token_mixing/Dense_0/kernel", "channel_mixing/Dense_0/kernel"])) for i in range(blocks)]
print("gradient norm of each block's first-layer kernels:", " ".join(f"{g:.2e}" for g in grad_norms))
assert min(grad_norms) > 0.05 * max(grad_norms)  # no vanishing: the first block learns as fast as the last

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.bar(range(blocks), grad_norms)
ax.set(xlabel="block", ylabel="gradient norm", title="gradient reaching each block (residual Mixer, at init)")
save_figure(fig, "06_gradient_per_block")

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
