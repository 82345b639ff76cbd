# %% [markdown]
# # Lesson 9 — Training for real: learning curves, overfitting, augmentation
#
# **You will learn** to train a Mixer end to end with the paper's recipe, to read learning curves, and to see
# what data augmentation does to the gap between training and test accuracy.
#
# The data: `synthetic_shapes`, six shape classes drawn at random positions, sizes and colours on noisy
# backgrounds — made on the spot, no download. (`examples/cifar10.py` runs the same loop on CIFAR-10, with
# checkpoints and resume.) The loop is `tinymixer.training.train.fit`, built on `train_step`, and a training step
# is five lines: the forward pass, the loss and its gradient, the backward pass, clipping, the update. Here they
# are, plainly; the library's `train_step` is the same five steps (print it: `print_code(train_step)`), and its
# `run_step` adds what a real run puts around them (label smoothing, mixup, gradient accumulation, several
# processes, training the head alone).

# %%
import numpy as np
from lesson_utils import learning_curves, pick, save_figure, training_model

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, normalize, synthetic_shapes
from tinymixer.training.train import fit, train_step


def plain_step(model, optimizer, images, labels, lr, clip=1.0):
    logits = model.forward(images, train=True)  # 1. (B, K), caches kept for the backward
    loss, dlogits = tm.softmax_cross_entropy(logits, labels)  # 2. the loss and dL/dlogits = (p - y) / B
    model.backward(dlogits)  # 3. fills model.grads
    tm.clip_by_global_norm(model.grads, clip)  # 4. one scale for all gradients, if their norm exceeds clip
    optimizer.step(model.params, model.grads, lr)  # 5. SGD with momentum, in place
    return float(loss)

# Quick mode: three of the six shapes, and a smaller Mixer (lesson_utils.training_model), so that seconds of
# training still show learning, overfitting and what augmentation does.
classes = pick(SHAPE_NAMES, ["disc", "square", "bar"])


def shapes(num, seed):
    """``num`` images of the chosen classes, labelled 0, 1, ... in the order of ``classes``."""
    images, labels = synthetic_shapes(num if classes == SHAPE_NAMES else 3 * num, size=16, seed=seed)
    new_label = np.full(len(SHAPE_NAMES), -1)
    new_label[[SHAPE_NAMES.index(name) for name in classes]] = np.arange(len(classes))
    keep = new_label[labels] >= 0
    assert keep.sum() >= num
    return images[keep][:num], new_label[labels[keep]][:num]


n_train, epochs, batch_size, warmup = pick(3000, 600), 15, pick(64, 32), pick(50, 10)
train_x, train_y = shapes(n_train, seed=0)
test_x, test_y = shapes(pick(1000, 400), seed=1)
print(f"{n_train} training and {len(test_y)} test images of {len(classes)} classes: {classes} "
      f"(chance: {100 / len(classes):.0f}%)")

# The plain step and the library's train_step, from the same start on the same batch: the same weights after.
batch_x = normalize(train_x[:batch_size])  # uint8 pixels to float32 in [-1, 1]
twins = [training_model(num_classes=len(classes), image_size=16) for _ in range(2)]
plain_step(twins[0], tm.SGD(), batch_x, train_y[:batch_size], lr=0.1)
train_step(twins[1], tm.SGD(), batch_x, train_y[:batch_size], lr=0.1)
gap = max(float(np.abs(twins[0].params[k] - twins[1].params[k]).max()) for k in twins[0].params)
print(f"plain_step vs train_step, one step: largest weight difference {gap:.1e}")
assert gap < 1e-6

# %% [markdown]
# Two runs of the same model and recipe: one on the raw images, one with random crops (2-pixel padding) and
# horizontal flips — both leave the class unchanged, so the model sees "new" images every epoch.

# %%
runs = {}
for name, crop, flip in [("no augmentation", 0, False), ("crop + flip", 2, True)]:
    model = training_model(num_classes=len(classes), image_size=16)  # micro/4; smaller in quick mode
    runs[name] = fit(model, train_x, train_y, epochs=epochs, batch_size=batch_size, lr=0.1, warmup=warmup,
                     crop_padding=crop, flip=flip, test=(test_x, test_y))
    last = runs[name][-1]
    print(f"{name:16s}: train accuracy {100 * last['train_accuracy']:.1f}%, test accuracy "
          f"{100 * last['test_accuracy']:.1f}%")

first, last = runs["no augmentation"][0], runs["no augmentation"][-1]
assert last["train_loss"] < first["train_loss"]  # it learns
assert last["test_accuracy"] > 1.5 / len(classes)  # far above chance

# %%
fig = learning_curves(runs, accuracy_title="accuracy: the train-test gap is overfitting")
save_figure(fig, "09_learning_curves")

# %% [markdown]
# Without augmentation the training accuracy races ahead while the test loss turns up again: the model memorises
# its 3000 images (600 in quick mode). With crops and flips the gap shrinks. The paper's Mixers are data-hungry for
# the same reason: no convolution builds in that a shape is the same shape one pixel to the right.
#
# ## Exercises
# 1. Warm-up matters near the largest stable learning rate, not below it: at `lr=0.5` runs with `warmup=0` and
#    `warmup=30` are alike. Train 3 epochs at `lr=2.0` with each and compare the train loss with chance,
#    ln 3 ≈ 1.10 (quick mode, measured here: without warm-up 2.4, then 4.9 — far above chance, the weights thrown
#    off by the first full-size steps; with 30 steps of warm-up 1.2 throughout; `tests/test_lessons.py` checks it).
# 2. Train with label smoothing, `fit(..., label_smoothing=0.1)` (or a loop of your own around
#    `run_step(..., label_smoothing=0.1)`). Does the test loss change more than the test accuracy? Why?
# 3. Double the training set. Which curve moves more, train or test?
