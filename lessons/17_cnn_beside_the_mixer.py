# %% [markdown]
# # Lesson 17 — The CNN beside the Mixer: what a convolution assumes
#
# **You will learn** what a convolution builds in that token mixing does not — that what matters is local, and the
# same everywhere — how to measure both properties with the forward and the backward pass, and what they are worth
# in training: on a task made of local patterns at random places, a small CNN learns from 400 images what the Mixer
# needs several times more images for. That is the paper's data-size finding in miniature.
#
# A 3×3 convolution computes each output pixel from the 3×3 window around it, with the same kernel at every
# position:
#
# $$\text{out}[y, x, o] = \sum_{i, j, c} x_{\text{pad}}[y + i, x + j, c]\, K[i, j, c, o].$$
#
# Token mixing computes each token from *all* tokens, with a weight for every pair of positions (lesson 5):
# $U_{*,c} = W_2\,\text{GELU}(W_1 X_{*,c})$, with $W_1$ of shape (D_S, S). Nothing in it says which tokens are
# neighbours, or that a pattern means the same thing in every place.

# %%
import numpy as np
from lesson_utils import QUICK, plt, print_reference, save_figure
from matplotlib.ticker import MaxNLocator

import tinymixer as tm
from tinymixer.data import MOTIF_NAMES, synthetic_motifs
from tinymixer.nn import reference
from tinymixer.training.train import fit

print_reference(reference.conv_forward)

# %% [markdown]
# ## Property 1: the same everywhere (translation equivariance)
# Shift an image two pixels to the right and convolve it, or convolve and then shift the result: away from the
# border, where the zero padding enters, the two are the same numbers. The kernel does not know where it is.
# Token mixing has no such property: shift the tokens of a table by one place, and its output is not the shifted
# output — each position has its own weights.

# %%
rng = np.random.default_rng(0)
image = rng.standard_normal((1, 12, 12, 2))  # (B, H, W, C)
kernel = rng.standard_normal((3, 3, 2, 4))  # (K, K, C_in, C_out)
shifted = np.zeros_like(image)
shifted[:, :, 2:] = image[:, :, :-2]  # two pixels to the right, zeros coming in on the left
conv_then_shift = reference.conv_forward(image, kernel, padding=1)[0][:, :, 1:9]  # output columns 1..8
shift_then_conv = reference.conv_forward(shifted, kernel, padding=1)[0][:, :, 3:11]  # the same, two to the right
conv_gap = np.abs(shift_then_conv - conv_then_shift).max() / np.abs(conv_then_shift).max()

grid, channels = 4, 3  # a 4x4 grid of tokens, S = 16
tokens = rng.standard_normal((1, grid * grid, channels))  # (B, S, C)
token_params = {"Dense_0/kernel": rng.standard_normal((16, 8)) / 4, "Dense_0/bias": np.zeros(8),
                "Dense_1/kernel": rng.standard_normal((8, 16)) / 3, "Dense_1/bias": np.zeros(16)}


def roll_tokens(x):  # every token one place to the right on the grid (wrapping round)
    return np.roll(x.reshape(1, grid, grid, -1), 1, axis=2).reshape(x.shape)


mix = reference.token_mixing_forward(tokens, token_params)[0]
mix_gap = np.abs(reference.token_mixing_forward(roll_tokens(tokens), token_params)[0] - roll_tokens(mix)).max()
mix_gap /= np.abs(mix).max()
print(f"convolution: shift then convolve vs convolve then shift, away from the border: largest difference "
      f"{conv_gap:.1e} of the largest output")
print(f"token mixing: roll the tokens then mix vs mix then roll: largest difference {mix_gap:.2f} of the largest "
      f"output")
assert conv_gap < 1e-13 and mix_gap > 0.1

# %% [markdown]
# ## Property 2: local (what one output can see)
# The backward pass tells what an output depends on (lesson 5 did this for the two mixings): set dL/dout to 1 at
# one output position and 0 elsewhere, and the input gradient is non-zero exactly where that output looks. One 3×3
# convolution sees a 3×3 window; two stacked ones a 5×5 window — a CNN's view grows with its depth. One token
# mixing sees every token at once.

# %%
def input_dependence(forward, backward, x, where):
    """|dL/dx| summed over channels when dL/dout is 1 at output ``where`` (an index into out) and 0 elsewhere."""
    out, cache = forward(x)
    dout = np.zeros_like(out)
    dout[where] = 1.0
    return np.abs(backward(dout, cache)).sum(axis=-1)[0]


small_kernel = rng.standard_normal((3, 3, 2, 2))
one_conv = input_dependence(lambda x: reference.conv_forward(x, small_kernel, padding=1),
                            lambda d, c: reference.conv_backward(d, c)[0], image, (0, 6, 6, 0))


def two_convs(x):
    first, c1 = reference.conv_forward(x, small_kernel, padding=1)
    second, c2 = reference.conv_forward(first, small_kernel, padding=1)
    return second, (c1, c2)


def two_convs_backward(dout, cache):
    return reference.conv_backward(reference.conv_backward(dout, cache[1])[0], cache[0])[0]


two_conv = input_dependence(two_convs, two_convs_backward, image, (0, 6, 6, 0))
token_view = input_dependence(lambda x: reference.token_mixing_forward(x, token_params),
                              lambda d, c: reference.token_mixing_backward(d, c)[0], tokens, (0, 5, 0))
windows = [int((one_conv > 0).sum()), int((two_conv > 0).sum()), int((token_view > 0).sum())]
print(f"inputs one output depends on: one 3x3 convolution {windows[0]} pixels, two {windows[1]} pixels, one token "
      f"mixing {windows[2]} of {grid * grid} tokens")
assert windows == [9, 25, grid * grid]

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
panels = [(one_conv, (6, 6), "one 3x3 convolution: 3x3 pixels"),
          (two_conv, (6, 6), "two 3x3 convolutions: 5x5 pixels"),
          (token_view.reshape(grid, grid), divmod(5, grid), "one token mixing: every token")]
for ax, (values, (row, col), title) in zip(axes, panels, strict=True):
    ax.imshow(values, cmap="Greys")  # white: no dependence at all
    ax.plot(col, row, "r+", markersize=14, mew=2)  # the output's own position
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].set_xlabel("12x12 pixels; output at (6, 6)")
axes[2].set_xlabel("4x4 tokens; output at token 5")
fig.suptitle("what one output (red +) depends on: |input gradient|, white where it is exactly 0")
save_figure(fig, "17_what_one_output_sees")

# %% [markdown]
# ## What it costs: parameters and the resolution
# A convolution's kernel does not depend on the image size. Token mixing's kernels are sized by the number of
# tokens S: a larger image (same patch size) needs a new, larger token-mixing MLP. (Lesson 18 shows the paper's way
# to grow one for fine-tuning at a higher resolution.)

# %%
for size in (32, 64):
    mixer = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=size)
    cnn = tm.ResNet.from_name("cnn-micro", num_classes=10, image_size=size)
    token_mixing = sum(v.size for k, v in mixer.params.items() if "token_mixing" in k)
    print(f"{size}x{size} images: micro/4 {mixer.num_params():,} parameters ({mixer.num_tokens} tokens; token mixing "
          f"{token_mixing:,}), cnn-micro {cnn.num_params():,}")

# %% [markdown]
# ## The same task, trained by both
# `synthetic_motifs`: grey noise with one bright 3×3 motif, an "x" or a "plus", anywhere in a 16×16 image. The two
# classes differ only in how five bright pixels are arranged in a small window — exactly the kind of pattern a
# convolution assumes. Each family is trained with the same recipe (`fit`: SGD with momentum, clipping, warm-up
# and cosine), batch and epochs, at its own learning rate (CNN 0.2, Mixer 0.1: the better of 0.05, 0.1 and 0.2 for
# each in runs like these), once on 400 images and once on 2000 (in quick mode the CNN only on 400: it has
# already solved the task there).

# %%
small, large = 400, 2000
train_x, train_y = synthetic_motifs(large, size=16, seed=0)
test_x, test_y = synthetic_motifs(1000, size=16, seed=1)
fig, axes = plt.subplots(1, 8, figsize=(10, 1.7))
for ax, index in zip(axes, range(8), strict=True):
    ax.imshow(train_x[index, ..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(MOTIF_NAMES[train_y[index]], fontsize=9)
    ax.axis("off")
fig.suptitle("synthetic_motifs: noise, and one 3x3 motif anywhere")
save_figure(fig, "17_motifs")


def make(family):
    if family == "CNN":  # two stages of pre-activation residual blocks, 4,954 parameters
        return tm.ResNet(num_classes=2, widths=(8, 16), depths=(1, 1), groups=4, image_size=16, in_channels=1)
    return tm.MlpMixer(num_classes=2, num_blocks=2, patch_size=4, hidden_dim=32, tokens_mlp_dim=16,
                       channels_mlp_dim=64, image_size=16, in_channels=1)  # 10,402 parameters


runs = {}
plan = [("CNN", small), ("Mixer", small), ("Mixer", large)] + ([] if QUICK else [("CNN", large)])
for family, n in plan:
    model = make(family)
    history = fit(model, train_x[:n], train_y[:n], epochs=12, batch_size=32, lr={"CNN": 0.2, "Mixer": 0.1}[family],
                  warmup=10, test=(test_x, test_y))
    runs[family, n] = history
    print(f"{family:5s} on {n:4d} images ({model.num_params():,} parameters): train accuracy "
          f"{100 * history[-1]['train_accuracy']:.1f}%, test accuracy {100 * history[-1]['test_accuracy']:.1f}% "
          f"({history[-1]['seconds']:.1f} s)")
cnn_small, mixer_small = runs["CNN", small][-1]["test_accuracy"], runs["Mixer", small][-1]["test_accuracy"]
mixer_large = runs["Mixer", large][-1]["test_accuracy"]
assert cnn_small > 0.95  # the CNN solves it from 400 images
assert mixer_small < cnn_small - 0.2 and runs["Mixer", small][-1]["train_accuracy"] > 0.9  # the Mixer memorises
assert mixer_large > mixer_small + 0.2  # and learns the task from more data

fig, ax = plt.subplots(figsize=(7, 4))
for (family, n), history in runs.items():
    ax.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history],
            "-" if n == small else "--", color="C0" if family == "CNN" else "C1", label=f"{family}, {n} images")
ax.axhline(50, color="grey", lw=0.8)
ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="a local pattern anywhere: CNN and Mixer", ylim=(40, 101))
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.legend()
ax.grid(alpha=0.3)
save_figure(fig, "17_cnn_vs_mixer")

# %% [markdown]
# On 400 images the CNN finds the rule — a detector of the motif, applied everywhere, then pooled — while the
# Mixer fits its training images and stays close to chance on new ones: it has to learn separately, for each
# place the motif can be, what the CNN's shared 3×3 kernel assumes from the start. With five times the data the
# Mixer learns it too. The assumption is a prior: worth data when it is right, as here. When it is wrong — the
# pixel shuffles of lesson 11, which destroy what "neighbour" means — the CNN pays and the Mixer does not. The
# paper's claim is the large-data end of this: with enough pre-training data the Mixer's lack of built-in
# assumptions stops costing accuracy. `experiments/data_size.py` measures the same trend on real digits
# (docs/paper.md: the CNN's lead falls from 6.7 points at 10% of the data to 0.5 at 100%).
#
# ## Exercises
# 1. Train both families on motifs that appear only in the left half of the image (set the images' right halves to
#    noise without a motif), then test on motifs in the right half only. Which family keeps its accuracy, and which
#    property above explains it?
# 2. How many parameters does one token-mixing MLP of Mixer-B/16 (D_S = 384) have at 224×224, and at 448×448?
#    And one 3×3 convolution from 768 to 768 channels?
# 3. Replace the CNN's first convolution by a 1×1 one (every pixel alone): what can the first layer still see, and
#    what does that do to the motif task? (Answers: `lessons/ANSWERS.md`.)
