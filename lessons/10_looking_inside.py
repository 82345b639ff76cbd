# %% [markdown]
# # Lesson 10 — Looking inside: token-mixing weights and stem filters as pictures
#
# **You will learn** to read a trained Mixer's weights as images, as the paper does (its Figure 5): each hidden
# unit of the first token-mixing layer has one weight per patch, so its S weights form a picture on the patch grid.
# The paper finds local detectors, often in pairs of opposite sign, and stem filters like the colour and edge
# detectors of a CNN's first layer. A short run on small images shows their beginnings, once you know where to look.

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
#
# A trained weight is its random initial value plus what training added to it, and after a short run the random
# part still dominates: the trained pictures look almost as noisy as the initial ones. So look at the *change*,
# trained − initial, as well: that is what the data wrote into the weights. A number says what the eye sees: the
# correlation between the weights of neighbouring patches (left-right and up-down) over the pictures shown —
# about 0 for independent random weights, near 1 for smooth ones.

# %%
kernel = tm.to_host(model.params["MixerBlock_0/token_mixing/Dense_0/kernel"])  # (S, D_S)
start = initial["MixerBlock_0/token_mixing/Dense_0/kernel"]
assert kernel.shape == (grid * grid, model.tokens_mlp_dim)
change = np.linalg.norm(kernel - start) / np.linalg.norm(kernel)
print(f"token-mixing kernel: {kernel.shape}, moved {100 * change:.0f}% of its norm from the initialisation")


def neighbour_correlation(pictures):
    """Correlation of the values of neighbouring cells, left-right and up-down, over pictures (..., rows, cols)."""
    left, right = pictures[..., :, :-1].ravel(), pictures[..., :, 1:].ravel()
    top, bottom = pictures[..., :-1, :].ravel(), pictures[..., 1:, :].ravel()
    return float(np.corrcoef(np.concatenate([left, top]), np.concatenate([right, bottom]))[0, 1])


# the 8 hidden units training moved most
order = np.argsort(-np.linalg.norm(kernel - start, axis=0))[:8]
panels = {"at initialisation": start[:, order], "trained": kernel[:, order],
          "trained - initial: what training added": (kernel - start)[:, order]}
smooth = {name: neighbour_correlation(columns.T.reshape(-1, grid, grid)) for name, columns in panels.items()}
print("neighbouring patches' weights, correlation: " + ", ".join(f"{name.split(':')[0]} {value:.2f}"
                                                                  for name, value in smooth.items()))
added = smooth["trained - initial: what training added"]
assert added > 0.3 and added > smooth["at initialisation"] + 0.25

fig, axes = plt.subplots(4, 8, figsize=(12, 5.2), height_ratios=[1, 1, 1, 0.1])
for row, (name, columns) in zip(axes, panels.items(), strict=False):
    for ax, column in zip(row, columns.T, strict=True):
        image = ax.imshow(column.reshape(grid, grid) / np.abs(column).max(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_title(f"{name} (neighbour correlation {smooth[name]:.2f})", loc="left", fontsize=10)
for ax in axes[3]:  # the last row becomes one axis for the colour scale
    ax.remove()
bar = fig.colorbar(image, cax=fig.add_subplot(axes[0, 0].get_gridspec()[3, 2:6]), orientation="horizontal",
                   ticks=[-1, 0, 1])
bar.set_label("weight / the picture's largest |weight|")
fig.suptitle("block 0's token mixing: 8 hidden units, each a picture on the 8x8 patch grid")
save_figure(fig, "10_token_mixing_weights")

# %% [markdown]
# What training added is smooth and local: blobs that weigh a few neighbouring patches together, often beside a
# blob of the opposite sign — a unit that compares one region of the image with the region next to it. These are
# the beginnings of the paper's local, paired detectors (its Figure 5), here after under a minute on 3000 small
# images (quick mode: 600, with a smaller Mixer). In the trained weights themselves they are still hidden under the
# random initialisation; with more data and longer training the learned part grows until it dominates
# (exercise 2).
#
# ## Stem filters
# `stem/kernel` (P, P, 3, C): each of the C output channels is a P×P colour filter, applied to every patch. The same
# reading: the trained filters, and what training added to them.

# %%
stem = tm.to_host(model.params["stem/kernel"])  # (4, 4, 3, C)
stem_change = stem - initial["stem/kernel"]
order = np.argsort(-np.linalg.norm(stem_change.reshape(-1, stem.shape[-1]), axis=0))[:16]
stem_smooth = {"trained": neighbour_correlation(np.moveaxis(stem[..., order], -1, 0).transpose(0, 3, 1, 2)),
               "added": neighbour_correlation(np.moveaxis(stem_change[..., order], -1, 0).transpose(0, 3, 1, 2))}
print(f"stem filters: neighbouring pixels' weights, correlation: trained {stem_smooth['trained']:.2f}, what "
      f"training added {stem_smooth['added']:.2f}")
assert stem_smooth["added"] > 0.5
fig, axes = plt.subplots(2, 16, figsize=(12, 2.3))
for row, filters, name in [(0, stem, "trained"), (1, stem_change, "trained - initial")]:
    for ax, c in zip(axes[row], order, strict=True):
        f = filters[..., c]
        ax.imshow((f - f.min()) / (f.max() - f.min() + 1e-12), interpolation="nearest")
        ax.axis("off")
    axes[row, 0].set_title(name, loc="left", fontsize=9)
# an RGB picture has no single colour bar: say the scale in the title instead
fig.suptitle(f"the 16 stem filters training moved most ({stem.shape[0]}x{stem.shape[1]} RGB each), each scaled from "
             f"its smallest weight (black) to its largest (white), the three colours together", fontsize=9)
save_figure(fig, "10_stem_filters")

# %% [markdown]
# The stem learned colour first: what it added is mostly a smooth colour, or a smooth change of colour across the
# patch — on images whose classes differ in shape but whose shape and background have random colours, telling the
# shape's pixels from the background's is the first thing to learn. The edge-like filters of a CNN's first layer,
# which the paper's large models also show, need more data and training than this lesson spends.
#
# ## Exercises
# 1. Plot what training added to the token-mixing kernels of the last block. Is it more or less local than block
#    0's?
# 2. Train on 20000 images for 20 epochs (about 10 minutes on a 2-core CPU; 5000 images for 10 epochs take about
#    a tenth of that and already show the trend). Do the trained pictures themselves (not only the change) become
#    smooth and local? Then train with `crop_padding=0, flip=False`: what changes? (Hint: flips make mirrored pairs
#    of detectors useful.)
# 3. Why would a fixed permutation of the patches scramble these pictures but not the accuracy? (Lesson 11.)
