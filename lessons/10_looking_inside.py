# %% [markdown]
# # Lesson 10 — Looking inside: token-mixing weights and stem filters as pictures
#
# **You will learn** to read a trained Mixer's weights as images, as the paper does (its Figure 5): each hidden
# unit of the first token-mixing layer has one weight per patch, so its S weights form a picture on the patch grid.
# The paper finds local detectors, often in pairs of opposite sign; and the stem's filters look like the edge and
# colour detectors of a CNN's first layer.

# %%
import numpy as np
from lesson_utils import pick, plt, save_figure, training_model

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, synthetic_shapes
from tinymixer.training.train import fit

size, patch = 32, 4
grid = size // patch  # an 8x8 grid of patches: S = 64 tokens
train_x, train_y = synthetic_shapes(pick(3000, 600), size=size, seed=0)
model = training_model(num_classes=len(SHAPE_NAMES), image_size=size)  # micro/4; smaller in quick mode
initial = {k: tm.to_host(v).copy() for k, v in model.params.items()}  # on the host
# quick mode: batches of 16, so that 600 images still make enough steps to move the weights as far
history = fit(model, train_x, train_y, epochs=pick(8, 10), batch_size=pick(64, 16), lr=0.1, warmup=pick(50, 10),
              crop_padding=4, flip=True)
print(f"trained: train accuracy {100 * history[-1]['train_accuracy']:.1f}% (chance: {100 / len(SHAPE_NAMES):.0f}%)")

# %% [markdown]
# ## Token-mixing weights
# `MixerBlock_0/token_mixing/Dense_0/kernel` has shape (S, D_S): column j, reshaped to the 8×8 patch grid, shows
# how hidden unit j weighs the patches. Red and blue are opposite signs.

# %%
kernel = tm.to_host(model.params["MixerBlock_0/token_mixing/Dense_0/kernel"])  # (S, D_S)
assert kernel.shape == (grid * grid, model.tokens_mlp_dim)
change = np.linalg.norm(kernel - initial["MixerBlock_0/token_mixing/Dense_0/kernel"]) / np.linalg.norm(kernel)
print(f"token-mixing kernel: {kernel.shape}, moved {100 * change:.0f}% of its norm from the initialisation")


def weight_grid(ax_grid, columns, title):
    """One picture per hidden unit, each divided by its own largest |weight| (one colour scale for all)."""
    for ax, column in zip(ax_grid.ravel(), columns.T, strict=False):
        image = ax.imshow(column.reshape(grid, grid) / np.abs(column).max(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.axis("off")
    ax_grid[0, 0].set_title(title, loc="left", fontsize=10)
    return image


# order the hidden units by how far training moved them: the most changed first
moved = np.linalg.norm(kernel - initial["MixerBlock_0/token_mixing/Dense_0/kernel"], axis=0)
order = np.argsort(-moved)[:16]
fig, axes = plt.subplots(5, 8, figsize=(12, 7), height_ratios=[1, 1, 1, 1, 0.12])
weight_grid(axes[:4, :4], kernel[:, order], "trained: 16 hidden units of block 0")
image = weight_grid(axes[:4, 4:], initial["MixerBlock_0/token_mixing/Dense_0/kernel"][:, order],
                    "the same units at init")
for ax in axes[4]:  # the last row becomes one axis for the colour scale
    ax.remove()
bar = fig.colorbar(image, cax=fig.add_subplot(axes[0, 0].get_gridspec()[4, 2:6]), orientation="horizontal",
                   ticks=[-1, 0, 1])
bar.set_label("weight / the unit's largest |weight|")
save_figure(fig, "10_token_mixing_weights")

# %% [markdown]
# What you see here, after under a minute on 3000 small images (quick mode: 600, with a smaller Mixer): training
# moves the pictures well away from the random initialisation (about half of the kernel's norm), but they stay
# noisy. The paper's clean, local, paired detectors come from ImageNet-scale training; structure appears here
# slowly as the data grows (exercise 2).
#
# ## Stem filters
# `stem/kernel` (P, P, 3, C): each of the C output channels is a P×P colour filter.

# %%
stem = tm.to_host(model.params["stem/kernel"])  # (4, 4, 3, C)
rows = stem.shape[-1] // 16  # C = 64 filters in 4 rows of 16 (32 in 2 rows in quick mode)
fig, axes = plt.subplots(rows, 16, figsize=(12, 0.85 * rows + 0.8))
for ax, c in zip(axes.ravel(), range(stem.shape[-1]), strict=True):
    f = stem[..., c]
    ax.imshow((f - f.min()) / (f.max() - f.min() + 1e-12), interpolation="nearest")
    ax.axis("off")
# an RGB picture has no single colour bar: say the scale in the title instead
fig.suptitle(f"stem filters: {stem.shape[-1]} channels, each a {stem.shape[0]}x{stem.shape[1]} RGB filter, "
             f"scaled from its smallest weight (black) to its largest (white), the three colours together; grey: "
             f"halfway", fontsize=9)
save_figure(fig, "10_stem_filters")

# %% [markdown]
# ## Exercises
# 1. Plot the token-mixing kernels of the last block. Are they more or less local than block 0's?
# 2. Train on 20000 images for 20 epochs (about 10 minutes on a 2-core CPU; 5000 images for 10 epochs take about
#    a tenth of that and already show the trend). Do the pictures become smoother and more local? Then train with
#    `crop_padding=0, flip=False`: what changes? (Hint: flips make mirrored pairs of detectors useful.)
# 3. Why would a fixed permutation of the patches scramble these pictures but not the accuracy? (Lesson 11.)
