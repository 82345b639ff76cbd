# %% [markdown]
# # Lesson 11 — Why no convolution? Permuting patches and pixels
#
# **You will learn** the paper's invariance result (section 3.4): shuffle the order of the patches with one fixed
# permutation, and the pixels inside every patch with another, the same for all images — a Mixer trained on the
# shuffled images learns *exactly* as well. Token mixing is a dense layer over the patch axis and the stem a dense
# layer over the pixels of a patch: a fixed permutation of their inputs is just a permutation of their weights.
# A global shuffle of all pixels, across patches, is different: it breaks the patches themselves.

# %%
import numpy as np
from lesson_utils import pick, plt, save_figure

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, normalize, synthetic_shapes
from tinymixer.layers import patchify, unpatchify
from tinymixer.train import fit

size, P = 16, 4
S, pixels = (size // P) ** 2, P * P
rng = np.random.default_rng(0)
token_order, pixel_order = rng.permutation(S), rng.permutation(pixels)


def shuffle_patches_and_pixels(images):
    """Apply the fixed patch permutation and the fixed within-patch pixel permutation to a batch."""
    patches = patchify(images, P).reshape(len(images), S, pixels, -1)  # (B, S, P*P, C)
    shuffled = patches[:, token_order][:, :, pixel_order]
    return unpatchify(shuffled.reshape(len(images), S, -1), P, (size, size))


global_order = rng.permutation(size * size)


def shuffle_all_pixels(images):
    return images.reshape(len(images), size * size, -1)[:, global_order].reshape(images.shape)


# %% [markdown]
# ## The exact argument, in numbers
# Take a model A. Build B from A's weights: permute the stem kernel's pixel rows with the pixel order, the
# token-mixing layers' token axes with the patch order. Then B on shuffled images computes *exactly* A on the
# original images.

# %%
A = tm.MlpMixer.from_name("micro/4", num_classes=6, image_size=size, seed=0, dtype="float64")
for value in A.params.values():
    value[...] += 0.1 * rng.standard_normal(value.shape)  # any weights, not just the initial ones
B = tm.MlpMixer.from_name("micro/4", num_classes=6, image_size=size, seed=0, dtype="float64")


def permuted_weights(params):
    out = {k: v.copy() for k, v in params.items()}
    kernel = params["stem/kernel"].reshape(pixels, 3, -1)  # (P*P, C_in, C)
    out["stem/kernel"] = kernel[pixel_order].reshape(params["stem/kernel"].shape)
    for i in range(A.num_blocks):
        t = f"MixerBlock_{i}/token_mixing"
        out[f"{t}/Dense_0/kernel"] = params[f"{t}/Dense_0/kernel"][token_order]  # rows: input tokens
        out[f"{t}/Dense_1/kernel"] = params[f"{t}/Dense_1/kernel"][:, token_order]  # columns: output tokens
        out[f"{t}/Dense_1/bias"] = params[f"{t}/Dense_1/bias"][token_order]
    return out


B.params.update(permuted_weights(A.params))
images = normalize(synthetic_shapes(8, size=size, seed=2)[0], np.float64)
difference = np.abs(A(images) - B(shuffle_patches_and_pixels(images))).max()
print(f"largest logit difference, A(images) vs B(shuffled images): {difference:.1e}")
assert difference < 1e-12

# %% [markdown]
# ## Training on shuffled data
# So training on shuffled images is training the same model in permuted coordinates: with the correspondingly
# permuted initialisation, the two runs follow the same trajectory (up to float rounding). Against them: the same
# model trained on globally shuffled pixels.

# %%
train_x, train_y = synthetic_shapes(pick(2000, 256), size=size, seed=0)
test_x, test_y = synthetic_shapes(pick(600, 128), size=size, seed=1)
epochs = pick(10, 2)
results = {}
for name, transform, permute_init in [("original", None, False),
                                      ("patches + pixels shuffled", shuffle_patches_and_pixels, True),
                                      ("all pixels shuffled", shuffle_all_pixels, False)]:
    model = tm.MlpMixer.from_name("micro/4", num_classes=len(SHAPE_NAMES), image_size=size, seed=0)
    if permute_init:
        model.params.update({k: model.xp.asarray(v) for k, v in permuted_weights(model.params).items()})
    tx, ex = (train_x, test_x) if transform is None else (transform(train_x), transform(test_x))
    results[name] = fit(model, tx, train_y, epochs=epochs, lr=0.1, test=(ex, test_y))
    print(f"{name:26s} test accuracy {100 * results[name][-1]['test_accuracy']:.1f}%")

same = abs(results["original"][-1]["test_accuracy"] - results["patches + pixels shuffled"][-1]["test_accuracy"])
assert same <= 0.01, same  # identical up to float rounding in the order of sums

fig, ax = plt.subplots(figsize=(7, 4))
for (name, history), style in zip(results.items(), ["-", "--", ":"], strict=True):
    ax.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history], style, lw=2, label=name)
ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Mixer under fixed permutations of its input")
ax.legend()
ax.grid(alpha=0.3)
save_figure(fig, "11_permutations")

# %% [markdown]
# A CNN has no such invariance: its 3×3 kernels assume neighbouring pixels are related, which the shuffles
# destroy (the paper measures a ResNet dropping sharply). The price of Mixer's indifference is that it must learn
# locality from data.
#
# ## Exercises
# 1. Why must the *same* permutation be used for every image? What if each image had its own?
# 2. Which other weights would you permute if the channels of the stem output were shuffled?
# 3. Verify the argument for the within-patch shuffle alone (identity patch order).
