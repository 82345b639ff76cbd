# %% [markdown]
# # Lesson 15 — Data and augmentation: what a training batch is made of
#
# **You will learn** what the model is actually shown at each step: the classes, the random crop and flip, the
# stronger RandAugment operations, and the two ways of mixing images — mixup and CutMix — with the loss they need.
# Each is checked: a crop is a shifted window of the padded image, a flip undone by a second one, mixing two losses
# equal to one loss on mixed labels.
#
# Every training loop here takes its batches from one function, `tinymixer.data.pipeline.training_batch`: uint8
# images in, an augmented float batch in [-1, 1] out. Augmentation happens on uint8 images, before scaling, as in
# the official input pipeline; the model never sees the raw data twice the same way.

# %%
import numpy as np
from lesson_utils import pick, plt, print_code, save_figure

from tinymixer.data import SHAPE_NAMES, normalize, synthetic_shapes
from tinymixer.data.augment import (
    apply_augmentation,
    apply_cutmix,
    apply_randaugment,
    cutmix_box,
    draw_augmentation,
    draw_cutmix,
    draw_mixup,
    draw_randaugment,
)
from tinymixer.data.pipeline import Augmentation, training_batch
from tinymixer.training.train import cross_entropy

size = pick(32, 16)
images, labels = synthetic_shapes(pick(600, 120), size=size, seed=0)  # uint8 (N, H, W, 3), labels (N,)
print(f"{len(labels)} images of {size}x{size}x3, uint8, {len(SHAPE_NAMES)} classes: {SHAPE_NAMES}")
print(f"images per class: {np.bincount(labels, minlength=len(SHAPE_NAMES)).tolist()}")

# %% [markdown]
# ## The classes
# Look at the data before training on it: one row per class. The colours and positions are random, so only the
# shape tells the classes apart — a model must look at spatial structure.

# %%
per_class = 6
fig, axes = plt.subplots(len(SHAPE_NAMES), per_class, figsize=(per_class * 1.1, len(SHAPE_NAMES) * 1.1))
for row, name in enumerate(SHAPE_NAMES):
    for col, index in enumerate(np.flatnonzero(labels == row)[:per_class]):
        axes[row, col].imshow(images[index])
    axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("synthetic_shapes: one row per class")
save_figure(fig, "15_gallery")

# %% [markdown]
# ## Crop and flip
# The standard CIFAR augmentation: pad every side with `p` zero pixels, cut a random H×W window out of the padded
# image, and mirror it left-right with probability 1/2. The random choices are drawn for the whole batch first
# (`draw_augmentation`: offsets `dy`, `dx` in 0..2p and a `mirror` flag per image), then applied — so that the
# rows of a batch can be made by different processes and still be the one batch (lesson 13).

# %%
print_code(apply_augmentation)
p = size // 8
rng = np.random.default_rng(1)
one = np.repeat(images[:1], 8, axis=0)  # the same image 8 times: 8 different random views of it
draws = draw_augmentation(rng, len(one), crop_padding=p, flip=True)
views = apply_augmentation(one, draws)
print(f"padding {p}: offsets dy {draws['dy'].tolist()}, dx {draws['dx'].tolist()}, mirrored "
      f"{draws['mirror'].astype(int).tolist()}")

# Check: every view is the window (dy, dx) of the zero-padded image, mirrored where drawn.
padded = np.pad(one[0], ((p, p), (p, p), (0, 0)))
for i in range(len(one)):
    window = padded[draws["dy"][i]:draws["dy"][i] + size, draws["dx"][i]:draws["dx"][i] + size]
    assert np.array_equal(views[i], window[:, ::-1] if draws["mirror"][i] else window)
centred = {"padding": p, "dy": np.full(2, p), "dx": np.full(2, p), "mirror": np.array([True, True])}
twice = apply_augmentation(apply_augmentation(one[:2], centred), centred)
assert np.array_equal(twice, one[:2])  # the centred window, mirrored twice: the image itself
print("every view is a shifted window of the padded image; a flip undone by a second flip: checked")

fig, axes = plt.subplots(1, 9, figsize=(11, 1.6))
axes[0].imshow(one[0])
axes[0].set_title("original")
for i, ax in enumerate(axes[1:]):
    ax.imshow(views[i])
    ax.set_title(f"({draws['dy'][i] - p:+d},{draws['dx'][i] - p:+d}){' M' if draws['mirror'][i] else ''}",
                 fontsize=8)
for ax in axes:
    ax.axis("off")
fig.suptitle("random crop (shift from the centre) and flip (M): one image, eight views")
save_figure(fig, "15_crop_flip")

# %% [markdown]
# ## RandAugment
# The paper pre-trains with RandAugment(2, 15): every image gets `N = 2` operations, each chosen uniformly from a
# list (rotate, shear, translate, colour, contrast, solarize, posterize, cutout, ... the official big_vision list of
# 16), all at one magnitude `M`. Two numbers replace a search over augmentation policies. The operations reproduce
# the official TensorFlow ones (`tests/test_augment.py` compares them with PIL's).

# %%
rng = np.random.default_rng(2)
strong = draw_randaugment(rng, 8, num_ops=2, magnitude=15)
augmented = apply_randaugment(one, strong)
names = [" + ".join(strong["ops"][k] for k in choice) for choice in strong["choice"]]
for name in names:
    print(f"  {name}")
assert augmented.dtype == np.uint8 and augmented.shape == one.shape  # still an image batch
changed = [not np.array_equal(augmented[i], one[i]) for i in range(len(one))]
print(f"images changed: {sum(changed)} of {len(one)} (an operation can also leave an image as it was, e.g. a "
      f"posterize that keeps the bits this image uses)")

fig, axes = plt.subplots(1, 8, figsize=(11, 2))
for i, ax in enumerate(axes):
    ax.imshow(augmented[i])
    ax.set_title(names[i].replace(" + ", "\n+ "), fontsize=6)
    ax.axis("off")
fig.suptitle("RandAugment(2, 15) of one image")
save_figure(fig, "15_randaugment")

# %% [markdown]
# Magnitude 15 is strong for images this small: the translations are scaled with the image (the official 100
# pixels at 224 px), and a translation, shear or rotation can push most of the shape out of the picture, leaving a
# view that no longer shows its class. The paper applies it to ImageNet's 224-pixel images for pre-training; on
# small images a lower magnitude (the `scratch-cifar` recipe's RandAugment(2, 9)) keeps more views true to their
# label.

# %% [markdown]
# ## Mixing two images: mixup and CutMix
# **mixup** blends each image with a partner from the same batch, `x = λ x_a + (1 − λ) x_b`, with λ drawn from
# Beta(α, α) once per batch. **CutMix** pastes a box of the partner into the image instead, and λ becomes the share
# of the image that is still its own. Either way the image is now partly of class a and partly of class b, and the
# loss says so:
#
# $$\text{loss} = \lambda\, \text{CE}(p, y_a) + (1 - \lambda)\, \text{CE}(p, y_b).$$
#
# Cross-entropy is linear in its target, so this is the same as one cross-entropy against the mixed label
# $q = \lambda\,\text{onehot}(y_a) + (1 - \lambda)\,\text{onehot}(y_b)$ — and its gradient is the familiar
# $(p - q)/B$ of lesson 7. Checked below.

# %%
rng = np.random.default_rng(3)
batch, batch_labels = images[:8], labels[:8]
lam, partner = draw_mixup(rng, len(batch), alpha=0.5)
mixed = lam * normalize(batch) + (1 - lam) * normalize(batch[partner])  # what training_batch does, in [-1, 1]
cut = draw_cutmix(rng, len(batch), alpha=1.0)
pasted, cut_lam = apply_cutmix(batch, batch[cut["partner"]], cut)
y0, y1, x0, x1 = cutmix_box(cut, size, size)
others = cut["partner"] != np.arange(len(batch))  # the images whose partner is another image
own = (pasted == batch).all(axis=-1)[others].mean()  # the share of their pixels that are still their own
print(f"mixup: lam {lam:.3f}; CutMix: box rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}, lam {cut_lam:.3f} = "
      f"1 - box area / image area; pixels still the image's own: {own:.3f}")
assert abs(own - cut_lam) < 0.02  # (a pasted pixel may happen to equal the one it replaced)

logits = np.random.default_rng(4).standard_normal((8, len(SHAPE_NAMES)))
loss, dlogits = cross_entropy(logits, batch_labels, mix=(batch_labels[partner], lam))
k = len(SHAPE_NAMES)
q = lam * np.eye(k)[batch_labels] + (1 - lam) * np.eye(k)[batch_labels[partner]]  # the mixed labels (8, K)
p_soft = np.exp(logits - logits.max(1, keepdims=True))
p_soft /= p_soft.sum(1, keepdims=True)
loss_q = -(q * np.log(p_soft)).sum(1).mean()
print(f"mixed loss {float(loss):.12f}; cross-entropy on the mixed labels {loss_q:.12f}; gradient (p - q)/B: "
      f"largest difference {np.abs(dlogits - (p_soft - q) / 8).max():.1e}")
assert abs(float(loss) - loss_q) < 1e-12 and np.abs(dlogits - (p_soft - q) / 8).max() < 1e-15

fig, axes = plt.subplots(2, 6, figsize=(9, 3.9))
for i in range(6):
    axes[0, i].imshow(((mixed[i] + 1) * 127.5).astype(np.uint8))
    axes[0, i].set_title(f"{lam:.2f} {SHAPE_NAMES[batch_labels[i]]}\n{1 - lam:.2f} "
                         f"{SHAPE_NAMES[batch_labels[partner[i]]]}", fontsize=7)
    axes[1, i].imshow(pasted[i])
    axes[1, i].set_title(f"{cut_lam:.2f} {SHAPE_NAMES[batch_labels[i]]}\n{1 - cut_lam:.2f} "
                         f"{SHAPE_NAMES[batch_labels[cut['partner'][i]]]}", fontsize=7)
for ax in axes.flat:
    ax.axis("off")
axes[0, 0].text(-0.4, 0.5, "mixup", transform=axes[0, 0].transAxes, ha="right", va="center")
axes[1, 0].text(-0.4, 0.5, "CutMix", transform=axes[1, 0].transAxes, ha="right", va="center")
fig.suptitle("two images in one, and the label shares the loss gives them")
save_figure(fig, "15_mixing")

# %% [markdown]
# ## The one batch path
# `training_batch` does all of it in a fixed order — crop and flip, RandAugment, random erasing, scaling to
# [-1, 1], then mixup or CutMix — drawing every random choice for the whole batch from one generator. Two
# consequences, both checked: a generator seeded by `(seed, epoch, step)` gives the same batch again (so a resumed
# run sees exactly the batches it would have seen), and a process that makes only its rows of the batch gets exactly
# those rows of the one-process batch (so N processes train on the one batch).

# %%
print_code(training_batch)
augmentation = Augmentation(crop_padding=p, flip=True, randaugment=(2, 9), mixup=0.0, cutmix=1.0)
index = np.arange(16)
x_a, y_a, mix_a = training_batch(images, labels, index, np.random.default_rng([0, 3, 7]), augmentation)
x_b, y_b, mix_b = training_batch(images, labels, index, np.random.default_rng([0, 3, 7]), augmentation)
top, _, top_mix = training_batch(images, labels, index, np.random.default_rng([0, 3, 7]), augmentation,
                                 rows=slice(0, 8))
print(f"batch {x_a.shape} {x_a.dtype} in [{x_a.min():.2f}, {x_a.max():.2f}]; labels {y_a.tolist()}; "
      f"CutMix lam {mix_a[1]:.3f}")
assert np.array_equal(x_a, x_b) and mix_a[1] == mix_b[1]  # the same seed: the same batch
assert np.array_equal(top, x_a[:8]) and np.array_equal(top_mix[0], mix_a[0][:8])  # a process's rows
print("the same seed gives the same batch; the first 8 rows made alone are the batch's first 8 rows: checked")

# %% [markdown]
# ## What augmentation is for
# A model that sees each training image only as it is can memorise it; shown a different view each time, it has to
# learn what stays the same across the views. Lesson 9 measures it: crop and flip narrow the gap between train and
# test accuracy. The views must keep the label true: a crop of 1/8 of the side keeps a shape a shape, while a crop
# of half the image could cut it out, and a flip would not do for digits (a mirrored 3 is no digit). That is why
# `examples/cifar10.py` has `--no-flip` and `--crop-padding`, and why the paper keeps its strong augmentation
# (RandAugment, mixup) for pre-training on large data, where more views of more images help most.
#
# ## Exercises
# 1. Write a left-right flip of a uint8 batch with NumPy slicing and check it against `apply_augmentation` with
#    `{"padding": 0, "mirror": np.ones(n, bool)}`.
# 2. Draw `lam` from `draw_mixup` a thousand times with `alpha=0.2` and with `alpha=1.0` and plot the histograms.
#    Which alpha mixes images mostly a little, and which one uniformly?
# 3. With `alpha=1.0` the CutMix box's side is `int(H * sqrt(1 - lam))` for λ uniform on [0, 1]. What is the
#    expected share of an image that is pasted (ignore the clipping at the border and the rounding)? Check it by
#    drawing many boxes with `cutmix_box` at the centre (`centre = [0.5, 0.5]`). (Answers: `lessons/ANSWERS.md`.)
