# %% [markdown]
# # Lesson 18 — Pretrained models: reading a checkpoint, a new head, a new resolution, few-shot probes
#
# **You will learn** how the paper uses a pre-trained Mixer: the official checkpoint layout and how to read it,
# why fine-tuning starts from a **zero head**, how the token-mixing weights are grown **block-diagonally** to
# fine-tune at a higher resolution (and what that guarantees exactly), and the **few-shot linear probe** the
# paper reports beside fine-tuning — what each one measures.
#
# The paper pre-trains on ImageNet-21k or JFT-300M and transfers to smaller tasks. Here, in seconds and offline:
# a small Mixer pre-trained on one task of `synthetic_motifs` (an "x" or a "plus" anywhere in a 16×16 image, lesson
# 17) and transferred to another (a "T" or an "L"), and to 32×32 images. The same code loads the paper's own files
# (`tm.pretrained("Mixer-B_16")`, docs/pretrained.md).

# %%
import tempfile
from pathlib import Path

import numpy as np
from lesson_utils import pick, plt, print_code, save_figure
from matplotlib.ticker import MaxNLocator

import tinymixer as tm
from tinymixer.data import normalize, synthetic_motifs
from tinymixer.training.checkpoint import load_model
from tinymixer.training.evaluate import evaluate
from tinymixer.training.train import fit
from tinymixer.transfer.convert import save_official
from tinymixer.transfer.fewshot import few_shot_evaluation
from tinymixer.transfer.pretrained import adapt, load_for_finetuning


def small_mixer(size=16, seed=0):
    """The Mixer of this lesson: 2 blocks of width 32, patches of 4 pixels, grey images."""
    return tm.MlpMixer(num_classes=2, num_blocks=2, patch_size=4, hidden_dim=32, tokens_mlp_dim=16,
                       channels_mlp_dim=64, image_size=size, in_channels=1, seed=seed)


pre_x, pre_y = synthetic_motifs(pick(3000, 2000), seed=0)  # the pre-training task: x or plus
pretrained = small_mixer()
history = fit(pretrained, pre_x, pre_y, epochs=12, batch_size=32, lr=0.1, warmup=10)
print(f"pre-trained on {len(pre_y)} images of x or plus: train accuracy {100 * history[-1]['train_accuracy']:.1f}%")

# %% [markdown]
# ## The official checkpoint layout
# An official Mixer file is a NumPy `.npz` of float32 arrays with the Flax module paths as names, the same names
# `model.params` uses: the stem, each `MixerBlock_i` with its two LayerNorms and two MLPs, the pre-head LayerNorm,
# the head. Nothing else is in it — not even the image size, which is read off the shapes: the stem kernel
# (P, P, C_in, C) gives the patch size, channels and width; the token-mixing kernel (S, D_S) the number of tokens.

# %%
folder = Path(tempfile.mkdtemp())
path = save_official(pretrained, folder / "pretrained.npz")
with np.load(path) as arrays:
    for name in list(arrays)[:9]:
        print(f"  {name:45s} {arrays[name].shape}")
    print(f"  ... {len(arrays)} arrays in all")
loaded = load_model(path)  # the configuration read off the shapes
print(f"read back: {loaded.describe()}, image size {loaded.image_size}")
check_x, check_y = synthetic_motifs(200, seed=9)
same = np.array_equal(loaded.forward(normalize(check_x), train=False),
                      pretrained.forward(normalize(check_x), train=False))
print(f"the loaded model's logits equal the saved one's: {same}")
assert same and tuple(loaded.image_size) == (16, 16)

# %% [markdown]
# ## A new task: a new head, and why it starts at zero
# For new classes the head (C → K) is replaced; everything else keeps its pre-trained weights. The official
# fine-tuning sets the new head to **zero**: every class then starts with the same logit, the first loss is exactly
# ln K, and the first gradient steps move the head along what the pre-trained features already say — no random
# head to unlearn first.

# %%
print_code(adapt)
params, config, notes = adapt({k: tm.to_host(v) for k, v in pretrained.params.items()}, pretrained.config(),
                              num_classes=2)
print("\n".join(notes))
new_x, new_y = synthetic_motifs(pick(800, 400), seed=1, names=("T", "L"))  # the new task, few images
test_x, test_y = synthetic_motifs(1000, seed=2, names=("T", "L"))
started = small_mixer()
for name in started.params:
    started.params[name] = params[name]
first = evaluate(started, normalize(test_x), test_y)
print(f"with the zero head: test loss {first['loss']:.6f} (ln 2 = {np.log(2):.6f}), accuracy "
      f"{100 * first['accuracy']:.1f}% (every logit equal: the first class wins every tie)")
assert abs(first["loss"] - np.log(2)) < 1e-6

# %% [markdown]
# ## Fine-tuning against training from scratch
# The same recipe, the same few images of T and L: once from the pre-trained weights (a smaller learning rate, as
# fine-tuning uses: the weights are already good), once from a fresh initialisation.

# %%
runs = {}
for name, model, lr in [("fine-tuned from x/plus", started, 0.03), ("from scratch", small_mixer(seed=2), 0.1)]:
    runs[name] = fit(model, new_x, new_y, epochs=12, batch_size=32, lr=lr, warmup=10, test=(test_x, test_y))
    print(f"{name:22s}: test accuracy {100 * runs[name][-1]['test_accuracy']:.1f}% after 12 epochs on "
          f"{len(new_y)} images (chance 50%)")
tuned, scratch = runs["fine-tuned from x/plus"][-1], runs["from scratch"][-1]
assert tuned["test_accuracy"] > scratch["test_accuracy"] + 0.1

# %% [markdown]
# The pre-trained network already finds bright 3×3 arrangements anywhere in the image — what x and plus taught it;
# telling T from L needs the same skill, so a few hundred images are enough to re-aim it. From scratch, the same
# images are too few (lesson 17: the Mixer needs data to learn what a convolution assumes).
#
# ## Few-shot linear probes
# The paper also reports *few-shot* accuracy: freeze the network, take its features (the pooled vector before the
# head) for n images per class, fit a linear classifier in closed form (regularised least squares on ±1 targets, as
# the official code), and test it. No gradient step touches the network: the probe measures how much of the new
# task the frozen features already separate linearly.

# %%
shots = (1, 5, 10, 25, 100)
probe_x, probe_y = synthetic_motifs(1000, seed=3, names=("T", "L"))
probes = {}
for name, model in [("pre-trained features", pretrained), ("random features", small_mixer(seed=4))]:
    train_features, test_features = model.features(normalize(probe_x)), model.features(normalize(test_x))
    probes[name] = few_shot_evaluation(train_features, probe_y, test_features, test_y, shots=shots, seeds=5)
    print(f"{name:21s}: " + ", ".join(f"{n}-shot {100 * probes[name][n].mean():.1f}%" for n in shots))
gain = probes["pre-trained features"][100].mean() - probes["random features"][100].mean()
print(f"100-shot: the pre-trained features are {100 * gain:.1f} points above random ones; fine-tuning on "
      f"{len(new_y)} images reached {100 * tuned['test_accuracy']:.1f}%")
assert gain > 0.02 and tuned["test_accuracy"] > probes["pre-trained features"][100].mean()

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for name, history in runs.items():
    ax1.plot([h["epoch"] for h in history], [100 * h["test_accuracy"] for h in history], label=name)
ax1.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"T or L from {len(new_y)} images")
ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
for name, result in probes.items():
    ax2.errorbar(shots, [100 * result[n].mean() for n in shots], yerr=[100 * result[n].std() for n in shots],
                 marker="o", capsize=3, label=name)
ax2.set(xscale="log", xlabel="images per class (shots)", ylabel="test accuracy (%)",
        title="few-shot linear probes on frozen features")
for ax in (ax1, ax2):
    ax.axhline(50, color="grey", lw=0.8)
    ax.legend()
    ax.grid(alpha=0.3)
save_figure(fig, "18_transfer")

# %% [markdown]
# The probe is far below fine-tuning here: features trained to tell x from plus carry *some* of what tells T from
# L — enough for a linear probe to beat random features — but the last layers specialised in the old classes, and
# only fine-tuning re-shapes them. The paper's few-shot numbers come from networks pre-trained on ImageNet-21k
# (14 million images, 21,000 classes) or JFT-300M (300 million images, 18,000 classes), whose features are general
# enough for a linear probe to do well: the probe measures exactly that generality, cheaply.
#
# ## A higher resolution: the block-diagonal token mixing
# Fine-tuning at a higher resolution keeps the patch size, so the grid of tokens grows — here 4×4 → 8×8 for 32×32
# images — and the token-mixing MLP, sized by S, no longer fits. The paper grows it block-diagonally: the large
# image is seen as 2×2 tiles of the old size, and each tile's tokens mix among themselves through a copy of the
# pre-trained weights (`tinymixer/transfer/pretrained.py`). Before any fine-tuning that guarantees something exact:
# on an image made of 2×2 tiles, every token equals the pre-trained model's token at the same place in its tile,
# so the logits are the mean of the pre-trained model's logits on the four tiles. Checked below, then fine-tuned.

# %%
big, notes = load_for_finetuning(path, num_classes=2, image_size=(32, 32), keep_head=True)  # the x/plus head kept
print("\n".join(notes))
tiles = synthetic_motifs(4 * 8, seed=5)[0].reshape(8, 2, 2, 16, 16, 1)  # 8 large images of 2x2 tiles each
mosaic = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(8, 32, 32, 1)  # (8, 32, 32, 1)
large_logits = big.forward(normalize(mosaic), train=False)
tile_logits = pretrained.forward(normalize(tiles.reshape(32, 16, 16, 1)), train=False).reshape(8, 4, 2).mean(1)
gap = np.abs(large_logits - tile_logits).max()
print(f"expanded model on 2x2 mosaics vs the mean of the pre-trained logits on the tiles: largest difference "
      f"{gap:.1e} (float32)")
assert gap < 1e-4

big_x, big_y = synthetic_motifs(pick(800, 400), size=32, seed=6)  # x or plus, anywhere in 32x32 images
big_test_x, big_test_y = synthetic_motifs(1000, size=32, seed=7)
before = evaluate(big, normalize(big_test_x), big_test_y)["accuracy"]
after = fit(big, big_x, big_y, epochs=3, batch_size=32, lr=0.03, warmup=5, test=(big_test_x, big_test_y))
fresh = fit(small_mixer(size=32, seed=3), big_x, big_y, epochs=3, batch_size=32, lr=0.1, warmup=5,
            test=(big_test_x, big_test_y))
print(f"x or plus in 32x32 images: expanded model before fine-tuning {100 * before:.1f}%, after 3 epochs on "
      f"{len(big_y)} images {100 * after[-1]['test_accuracy']:.1f}%; a fresh 32x32 Mixer after the same 3 epochs "
      f"{100 * fresh[-1]['test_accuracy']:.1f}%")
assert before > 0.55 and after[-1]["test_accuracy"] > fresh[-1]["test_accuracy"] + 0.1

# %% [markdown]
# Before fine-tuning the expanded model is already well above chance: a motif lies in one tile, whose logits
# recognise it, and the mean over the tiles carries that through (less surely, since the other three tiles add
# noise, and a motif cut by a tile border is seen by neither tile whole). Three epochs of fine-tuning let the token
# mixing learn across the tile borders.
#
# ## Exercises
# 1. Fine-tune with a *random* head (draw it with `np.random.default_rng(0).normal(0, 0.1, (32, 2))`) instead of the
#    zero head. What is the first loss, and how do the first epochs compare?
# 2. Expand to 48×48 images (3×3 tiles): what are the new token-mixing kernels' shapes, and how many of their
#    entries are zero? Check the mosaic property with 3×3 tiles.
# 3. Run a 5-shot probe on the *pre-training* classes (x or plus) with the pre-trained features. Why is it so much
#    higher than on T or L? (Answers: `lessons/ANSWERS.md`.)
