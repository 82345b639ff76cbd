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
from lesson_utils import pick, plt, save_figure, training_model
from matplotlib.ticker import MaxNLocator

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, normalize, synthetic_shapes
from tinymixer.data.permutations import patch_and_pixel_permutation, permute_mixer_params
from tinymixer.nn.conv import patchify, unpatchify
from tinymixer.training.evaluate import predict_logits
from tinymixer.training.train import fit

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
    num_blocks = sum(name.endswith("token_mixing/Dense_0/kernel") for name in params)
    for i in range(num_blocks):
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
# The library holds these two steps for any image and patch size, in `tinymixer.data.permutations` (its docstring
# has the derivation line by line); `experiments/permutations.py` uses it to run this lesson's comparison against a
# CNN. Drawn from the same seed it makes the same permutation, and the same weights:

# %%
library = patch_and_pixel_permutation((size, size), P, seed=0)
assert np.array_equal(library(images), shuffle_patches_and_pixels(images))
ours, theirs = permuted_weights(A.params), permute_mixer_params(A.params, library)
assert all(np.array_equal(ours[k], theirs[k]) for k in A.params)
print("tinymixer.data.permutations agrees with this lesson's two functions")

# %% [markdown]
# ## Training on shuffled data
# So training on shuffled images is training the same model in permuted coordinates: with the correspondingly
# permuted initialisation, the two runs follow the same trajectory (up to float rounding). Against them: the same
# model trained on globally shuffled pixels.
#
# The task: is the bar horizontal or vertical? The images are the library's "bar" shape, half of them transposed.
# Orientation is a relation between neighbouring pixels: a patch holds it, whatever the order of its pixels, and
# the shared stem can learn one detector for all patches; the global shuffle scatters it over the image.

# %%
def bars(num, seed):
    """``num`` images of one bar each, horizontal (label 0) or vertical (label 1, the image transposed)."""
    images, shapes = synthetic_shapes(8 * num, size=size, seed=seed)
    images = images[shapes == SHAPE_NAMES.index("bar")][:num]  # a sixth of the shapes are bars
    assert len(images) == num
    vertical = np.random.default_rng(seed).integers(0, 2, num)
    return np.where(vertical[:, None, None, None] == 1, images.swapaxes(1, 2), images), vertical


train_x, train_y = bars(1000, seed=0)
test_x, test_y = bars(400, seed=1)
epochs = pick(10, 4)
results, test_logits = {}, {}
for name, transform, permute_init in [("original", None, False),
                                      ("patches + pixels shuffled", shuffle_patches_and_pixels, True),
                                      ("all pixels shuffled", shuffle_all_pixels, False)]:
    model = training_model(num_classes=2, image_size=size)  # micro/4; smaller in quick mode
    if permute_init:
        model.params.update({k: model.xp.asarray(v) for k, v in permuted_weights(model.params).items()})
    tx, ex = (train_x, test_x) if transform is None else (transform(train_x), transform(test_x))
    results[name] = fit(model, tx, train_y, epochs=epochs, batch_size=32, lr=0.1, warmup=10, test=(ex, test_y))
    test_logits[name] = predict_logits(model, ex)
    last = results[name][-1]
    print(f"{name:26s} train accuracy {100 * last['train_accuracy']:5.1f}%, test accuracy "
          f"{100 * last['test_accuracy']:5.1f}%   (chance: 50%)")

drift = np.abs(test_logits["original"] - test_logits["patches + pixels shuffled"]).max()
print(f"the two trained models' test logits differ by at most {drift:.1e}: the same model, in permuted coordinates")
accuracy = {name: history[-1]["test_accuracy"] for name, history in results.items()}
assert abs(accuracy["original"] - accuracy["patches + pixels shuffled"]) <= 0.01  # equal up to float rounding
assert accuracy["all pixels shuffled"] < accuracy["original"]

fig, ax = plt.subplots(figsize=(7, 4))
for (name, history), style in zip(results.items(), ["-", "--", ":"], strict=True):
    ax.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history], style, lw=2, label=name)
ax.axhline(50, color="gray", lw=0.8, label="chance")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Mixer under fixed permutations of its input")
ax.legend()
ax.grid(alpha=0.3)
save_figure(fig, "11_permutations")

# %% [markdown]
# The global shuffle is not hopeless: the model still sees every pixel, and a fixed permutation could in principle
# be learned. But it must learn from data what the patches gave for free, so on the same 1000 images it learns
# more slowly and generalises worse. A CNN has no invariance to either shuffle: its 3×3 kernels assume neighbouring
# pixels are related, which the shuffles destroy (the paper measures a ResNet dropping sharply). The price of
# Mixer's indifference to the patch order is that it must learn the relations *between* patches from data.
#
# `experiments/permutations.py` runs this against the project's CNN (`tm.ResNet`) on real images; docs/paper.md
# has what it measured (three seeds, 5,000 MNIST digits): the shuffled CNN learns far more
# slowly (after 3 of 20 epochs 52% under the patch + pixel shuffle and 39% under the global one, against 88% on the
# original images), and at the end the global shuffle still costs it 8.4 points, the Mixer 3.2; the patch + pixel
# shuffle costs the CNN 1.8 points and the Mixer nothing.
#
# ## Exercises
# 1. Why must the *same* permutation be used for every image? What if each image had its own?
# 2. Which other weights would you permute if the channels of the stem output were shuffled?
# 3. Verify the argument for the within-patch shuffle alone (identity patch order).
# 4. Train on 4000 images instead of 1000. Does the gap between the original and the global shuffle close?
