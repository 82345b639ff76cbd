# %% [markdown]
# # Lesson 9 — Training for real: learning curves, overfitting, augmentation
#
# **You will learn** to train a Mixer end to end with the paper's recipe, to read learning curves, and to see
# what data augmentation does to the gap between training and test accuracy.
#
# The data: `synthetic_shapes`, six shape classes drawn at random positions, sizes and colours on noisy
# backgrounds — made on the spot, no download. (`examples/cifar10.py` runs the same loop on CIFAR-10, with
# checkpoints and resume.) The loop is `tinymixer.train.fit`, built on `train_step`:

# %%
import inspect

from lesson_utils import QUICK, pick, plt, save_figure

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, synthetic_shapes
from tinymixer.train import fit, train_step

print(inspect.getsource(train_step).split('"""')[-1])

n_train, epochs = pick(3000, 400), pick(15, 3)
train_x, train_y = synthetic_shapes(n_train, size=16, seed=0)
test_x, test_y = synthetic_shapes(pick(1000, 200), size=16, seed=1)
print(f"{n_train} training and {len(test_y)} test images of {len(SHAPE_NAMES)} classes: {SHAPE_NAMES}")

# %% [markdown]
# Two runs of the same model and recipe: one on the raw images, one with random crops (2-pixel padding) and
# horizontal flips — both leave the class unchanged, so the model sees "new" images every epoch.

# %%
runs = {}
for name, crop, flip in [("no augmentation", 0, False), ("crop + flip", 2, True)]:
    model = tm.MlpMixer.from_name("micro/4", num_classes=len(SHAPE_NAMES), image_size=16, seed=0)
    runs[name] = fit(model, train_x, train_y, epochs=epochs, batch_size=64, lr=0.1, warmup=50,
                     crop_padding=crop, flip=flip, test=(test_x, test_y))
    last = runs[name][-1]
    print(f"{name:16s}: train accuracy {100 * last['train_accuracy']:.1f}%, test accuracy "
          f"{100 * last['test_accuracy']:.1f}%")

first, last = runs["no augmentation"][0], runs["no augmentation"][-1]
assert last["train_loss"] < first["train_loss"]  # it learns
if not QUICK:
    assert last["test_accuracy"] > 0.4  # far above chance (1/6)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for name, history in runs.items():
    epochs_axis = [h["epoch"] for h in history]
    line = ax1.plot(epochs_axis, [h["train_loss"] for h in history], label=f"{name}, train")[0]
    ax1.plot(epochs_axis, [h["test_loss"] for h in history], "--", color=line.get_color(), label=f"{name}, test")
    ax2.plot(epochs_axis, [100 * h["train_accuracy"] for h in history], color=line.get_color(), label=f"{name}, train")
    ax2.plot(epochs_axis, [100 * h["test_accuracy"] for h in history], "--", color=line.get_color(),
             label=f"{name}, test")
ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy: the train-test gap is overfitting")
ax1.legend()
ax2.legend()
save_figure(fig, "09_learning_curves")

# %% [markdown]
# Without augmentation the training accuracy races ahead while the test loss turns up again: the model memorises
# its 3000 images. With crops and flips the gap shrinks. The paper's Mixers are data-hungry for the same reason:
# no convolution builds in that a shape is the same shape one pixel to the right.
#
# ## Exercises
# 1. Train without warm-up (`warmup=0`) at `lr=0.5`. What happens in the first epoch?
# 2. Add `label_smoothing=0.1` to `train_step` via a small loop of your own. Does the test loss change more than
#    the test accuracy? Why?
# 3. Double the training set. Which curve moves more, train or test?
