# %% [markdown]
# # Lesson 16 — Dropout and stochastic depth: noise that regularises
#
# **You will learn** the two regularisers a Mixer block can use while training: **dropout**, which zeroes single
# activations, and **stochastic depth**, which skips a whole residual branch for an image. You will check that both
# keep the expected activation unchanged (so evaluation needs no correction), derive and check their backward
# passes, see why the masks here are hashes of positions rather than random draws, and train with and without them.
#
# Where they sit in a block (lesson 6): dropout after the GELU of each MLP, stochastic depth on each branch before
# the residual sum,
#
# $$U = X + \text{sd}_1\big(W_2\, \text{drop}(\text{GELU}(W_1\, \text{LN}(X)))\big), \qquad
#   Y = U + \text{sd}_2\big(W_4\, \text{drop}(\text{GELU}(W_3\, \text{LN}(U)))\big).$$

# %%
import numpy as np
from lesson_utils import learning_curves, pick, print_code, save_figure, training_model

import tinymixer as tm
from tinymixer.data import SHAPE_NAMES, synthetic_shapes
from tinymixer.nn.gradcheck import check_gradients
from tinymixer.nn.layers import dropout_backward, dropout_forward, stochastic_depth_backward, stochastic_depth_forward
from tinymixer.nn.masks import KeepMask, keep_mask
from tinymixer.training.train import fit

# %% [markdown]
# ## Dropout, inverted
# Each activation is kept with probability 1 − r and zeroed otherwise; the kept ones are divided by 1 − r, so that
# the expected output is the input itself:
#
# $$y = x \odot m / (1 - r), \quad m_i \sim \text{Bernoulli}(1 - r), \qquad
#   \mathbb{E}[y_i] = x_i (1 - r) / (1 - r) = x_i .$$
#
# An evaluation pass then simply leaves dropout out. In plain NumPy it is one line; the library's version is the
# same function, computed in cache-sized blocks (checked equal, to rounding).

# %%
def plain_dropout(x, rate, mask):
    return x * mask / (1.0 - rate)


rng = np.random.default_rng(0)
rate = 0.25
x = rng.standard_normal((4, 16, 32))  # (B, tokens, channels): a hidden activation
mask = keep_mask(rng, x.shape, rate)  # bool, True where kept
y, cache = dropout_forward(x, rate, mask)
gap = np.abs(y - plain_dropout(x, rate, mask)).max()  # it multiplies by 1 / (1 - r), one rounding apart
print(f"rate {rate}: kept {mask.mean():.3f} of {mask.size} activations (expected {1 - rate}); the library's "
      f"dropout against the one-line version: largest difference {gap:.1e}")
assert gap <= 1e-15 * np.abs(x).max()

# The expectation, measured: the mean of y over many masks tends to x.
draws = pick(4000, 1000)
mean_y = np.mean([plain_dropout(x[0, 0], rate, keep_mask(rng, x[0, 0].shape, rate)) for _ in range(draws)], axis=0)
std_error = np.abs(x[0, 0]) * np.sqrt(rate / (1 - rate) / draws)  # std of y_i is |x_i| sqrt(r / (1 - r))
z = np.abs(mean_y - x[0, 0]) / std_error
print(f"mean of y over {draws} masks against x: largest gap {z.max():.1f} standard errors (32 values)")
assert z.max() < 5

# %% [markdown]
# ## Its backward
# For a fixed mask, dropout is linear in x with the diagonal map m / (1 − r), so
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} \odot m / (1 - r):$$
#
# the gradient reaches only the kept activations, scaled as they were. The finite-difference check holds the mask
# fixed (a check of a function that draws new noise at each call would compare different functions).

# %%
print_code(dropout_backward)
errors = check_gradients(lambda x: dropout_forward(x, rate, mask), dropout_backward, {"x": x})
print(f"dropout, gradient check with the mask held fixed: relative error {errors['x']:.1e} (on the dropped elements "
      f"the exact gradient is 0 and the finite difference is round-off: that is what the error measures)")
assert errors["x"] < 1e-6

# %% [markdown]
# ## Masks as hashes of positions
# The library does not draw its masks from a random-number generator. A mask is a *rule*: element j of image b is
# kept when a hash of its position, `h(h(b·n + j + k1) ^ k2)`, is above a threshold, with two keys k1, k2 drawn
# once per mask (`tinymixer/nn/masks.py`). The rule gives every part of the batch its own rows without computing
# the others — a thread's shard, a process's share, a GPU's part — and the same bits on NumPy and CuPy.

# %%
rule = KeepMask.draw(np.random.default_rng(1), (8, 16, 32), rate)  # 8 images
whole = rule.array(np)
part = rule[4:8].array(np)  # images 4..7 alone, computed on their own
print(f"kept fraction {whole.mean():.3f}; images 4..7 computed alone equal those rows of the whole mask: "
      f"{np.array_equal(part, whole[4:8])}")
assert np.array_equal(part, whole[4:8])

# %% [markdown]
# ## Stochastic depth
# Stochastic depth drops a whole residual branch for an image: `u = x + branch(x) · m_b / (1 − r)` with one m_b per
# image. A dropped branch leaves only the identity path, so for that image the network is one branch shallower.
# The rate rises with depth, from 0 at the first block to the chosen rate at the last (big_vision's Mixer): early
# blocks, which every later one builds on, are dropped least.

# %%
branch = rng.standard_normal((8, 16, 32))  # (B, S, C): a branch's output for 8 images
depth_mask = keep_mask(rng, (8,), 0.5)  # one entry per image
out, depth_cache = stochastic_depth_forward(branch, 0.5, depth_mask)
dropped = np.flatnonzero(~depth_mask)
print(f"rate 0.5 on 8 images: branches dropped for images {dropped.tolist()}; their branch outputs are all zero: "
      f"{bool((out[dropped] == 0).all())}; the kept ones doubled: "
      f"{np.array_equal(out[depth_mask], 2 * branch[depth_mask])}")
errors = check_gradients(lambda branch: stochastic_depth_forward(branch, 0.5, depth_mask), stochastic_depth_backward,
                         {"branch": branch})
print(f"stochastic depth, gradient check with the mask held fixed: relative error {errors['branch']:.1e}")
assert (out[dropped] == 0).all() and errors["branch"] < 1e-6

model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=32, dropout=0.1, stochastic_depth=0.1)
rates = model.block_rates()
print("micro/4 with dropout 0.1, stochastic depth 0.1, per block (dropout, depth): "
      + ", ".join(f"({d:g}, {s:.3f})" for d, s in rates))

# %% [markdown]
# ## Training passes and evaluation passes
# In a training pass the network draws its masks (from a generator seeded by the run's seed, epoch and step, so a
# resumed run draws the same ones); in an evaluation pass both regularisers are off and the network is exactly the
# plain one with the same weights.

# %%
images = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
plain = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=32)  # the same seed: the same weights
plain.params["head/kernel"][...] = model.params["head/kernel"][...] = 0.01  # a head that lets differences show
evaluation = np.array_equal(model.forward(images, train=False), plain.forward(images, train=False))
first = model.forward(images, train=True, rng=[0, 0, 0])
again = model.forward(images, train=True, rng=[0, 0, 0])
other = model.forward(images, train=True, rng=[0, 0, 1])
print(f"evaluation equals the plain network: {evaluation}; two training passes with the same seed agree: "
      f"{np.array_equal(first, again)}; with another seed they differ: {not np.array_equal(first, other)}")
assert evaluation and np.array_equal(first, again) and not np.array_equal(first, other)

# %% [markdown]
# ## What they do to training
# Two runs of the same small Mixer on few images, where it overfits (lesson 9): without regularisers, and with
# dropout 0.1 and stochastic depth 0.2. The noise makes the training data harder to fit — the training loss stays
# higher — in exchange for features that cannot rely on any single activation or block.

# %%
classes = pick(len(SHAPE_NAMES), 3)  # quick mode: the first three shapes (disc, square, cross), as lesson 9


def shapes(num, seed):
    images, labels = synthetic_shapes(2 * num * len(SHAPE_NAMES) // classes, size=16, seed=seed)
    keep = labels < classes
    return images[keep][:num], labels[keep][:num]


train_x, train_y = shapes(pick(1500, 600), seed=0)
test_x, test_y = shapes(pick(1000, 400), seed=1)
runs = {}
for name, rates in [("plain", {}), ("dropout 0.1 + depth 0.2", {"dropout": 0.1, "stochastic_depth": 0.2})]:
    net = training_model(num_classes=classes, image_size=16)
    net.dropout, net.stochastic_depth = rates.get("dropout", 0.0), rates.get("stochastic_depth", 0.0)
    runs[name] = fit(net, train_x, train_y, epochs=pick(30, 20), batch_size=32, lr=0.1, warmup=pick(50, 20),
                     test=(test_x, test_y))
    last = runs[name][-1]
    print(f"{name:24s}: final train loss {last['train_loss']:.3f}, test loss {last['test_loss']:.3f}, train "
          f"accuracy {100 * last['train_accuracy']:.1f}%, test accuracy {100 * last['test_accuracy']:.1f}% "
          f"(chance: {100 / classes:.0f}%)")
plain_run, noisy_run = runs["plain"][-1], runs["dropout 0.1 + depth 0.2"][-1]
assert noisy_run["train_loss"] > plain_run["train_loss"]  # the noise makes the training set harder to fit
assert noisy_run["test_accuracy"] > 1.25 / classes  # and the noisy model still learns
assert noisy_run["test_loss"] < plain_run["test_loss"]  # less confident where it is wrong

fig = learning_curves(runs, loss_title="loss (training loss: measured with the noise on)")
save_figure(fig, "16_regularised_training")

# %% [markdown]
# The training loss is measured in training passes, with the noise on: part of its gap to the plain run is the
# noise itself, not a worse model. What the run shows clearly is the test *loss*: the plain model, having
# memorised its training images, grows ever more confident, also where it is wrong, and its test loss climbs; the
# regularised one stays less sure of itself and its test loss stays lower. The test *accuracy* ends close here
# (a small data set, a short run): regularisers pay off most where overfitting is the problem — the paper uses
# stochastic depth (0.1) for long pre-training runs of large Mixers on ImageNet.
# `examples/cifar10.py --dropout 0.1 --stochastic-depth 0.1` trains with both.
#
# ## Exercises
# 1. Measure the variance of `plain_dropout(x, r, m)` over many masks for one value x and compare it with
#    x² r / (1 − r). What happens to it as r → 1, and why does that make large rates hard to train with?
# 2. Check a whole Mixer block's gradients with dropout and stochastic depth on, masks held fixed: draw them once
#    with `tinymixer.nn.blocks.draw_block_masks` and give them to `mixer_block_forward(..., masks=...)`.
# 3. Why must a gradient check never let dropout draw new masks between the evaluations of the finite difference?
#    Try it: what relative error do you get? (Answers: `lessons/ANSWERS.md`.)
