# %% [markdown]
# # Lesson 1 — Images as patches
#
# **You will learn** how MLP-Mixer turns an image into a table of *tokens*: cut it into P×P patches, flatten each,
# and send every patch through one shared linear map, the *stem*. And why that matrix multiply is exactly the
# stride-P convolution the paper and the official code describe.
#
# An image of H×W pixels with C_in colour channels has S = (H/P)·(W/P) patches. Each flattened patch is a row of
# P·P·C_in numbers; the stem multiplies every row by the same kernel matrix (P·P·C_in, C) and adds a bias:
#
# $$X = \mathrm{patches}(I)\, W_{\text{stem}} + b, \qquad X \in \mathbb{R}^{S \times C}.$$

# %%
import numpy as np
from lesson_utils import plt, save_figure

from tinymixer.data import normalize, synthetic_shapes
from tinymixer.nn.conv import patchify, stem_forward, unpatchify

images, labels = synthetic_shapes(4, size=32, seed=3)  # four 32x32 RGB images, uint8
x = normalize(images)  # to [-1, 1], the official input scaling
P = 8
patches = patchify(x, P)
print("images  ", x.shape, "-> patches", patches.shape, " (batch, S tokens, P*P*C_in)")

# %% [markdown]
# The patches are in row-major order over the patch grid (left to right, then top to bottom), and each patch is
# flattened as (row, column, channel). Patch 5 of a 4×4 grid is grid row 1, column 1:

# %%
assert np.array_equal(patches[0, 5], x[0, 8:16, 8:16, :].ravel())
assert np.array_equal(unpatchify(patches, P, (32, 32)), x)  # and the cut is perfectly reversible
print("patch 5 is the block of rows 8..15, columns 8..15: checked")

# %% [markdown]
# ## The stem is a convolution
# A convolution with a P×P kernel moved P pixels at a time sees each patch exactly once, and computes the same
# dot product of the patch with each of its C filters. Let us check that with a convolution written as loops.

# %%
C = 16
rng = np.random.default_rng(0)
kernel = rng.standard_normal((P, P, 3, C)).astype(np.float32) / np.sqrt(P * P * 3)  # (P, P, C_in, C)
bias = rng.standard_normal(C).astype(np.float32)
tokens, _ = stem_forward(x, kernel, bias)  # (B, S, C): one matrix multiply
print("tokens  ", tokens.shape)

conv = np.zeros((4, 32 // P, 32 // P, C), np.float32)
for i in range(32 // P):
    for j in range(32 // P):
        window = x[:, i * P:(i + 1) * P, j * P:(j + 1) * P, :]  # (B, P, P, C_in): what the filter sees
        conv[:, i, j] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2])) + bias
difference = np.abs(conv.reshape(4, -1, C) - tokens).max()
print(f"largest difference between stem and stride-{P} convolution: {difference:.2e}")
assert difference < 1e-5

# %% [markdown]
# ## A picture
# Left: an image with its patch grid. Right: the same image as the sequence of S patches the Mixer sees — the
# order is all it keeps of the geometry (lesson 11 shows what that implies).

# %%
fig, (ax_image, ax_tokens) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 3]})
ax_image.imshow(images[0])
for k in range(0, 33, P):
    ax_image.axhline(k - 0.5, color="white", lw=1)
    ax_image.axvline(k - 0.5, color="white", lw=1)
ax_image.set_title(f"32x32 image, {P}x{P} patches")
ax_image.axis("off")
strip = np.concatenate([np.pad(p.reshape(P, P, 3), ((0, 0), (0, 1), (0, 0)), constant_values=1.0)
                        for p in (patches[0] + 1) / 2], axis=1)
ax_tokens.imshow(strip)
ax_tokens.set_title(f"the same image as S = {patches.shape[1]} tokens, in order")
ax_tokens.axis("off")
save_figure(fig, "01_patches")

# %% [markdown]
# ## Exercises
# 1. With P = 4 on a 32×32 image, how many tokens are there, and how long is each flattened patch?
# 2. The stem has P·P·C_in·C + C parameters. Compare with a dense layer mapping the whole image to S·C numbers.
# 3. Change `P` to 16 and rerun: what happens to the grid and to the number of tokens? Why must H and W be
#    multiples of P (try `tinymixer.MlpMixer.from_name("micro/4", num_classes=10, image_size=30)`)?
