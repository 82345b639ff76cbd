"""Training recipes as data: named sets of a run's settings, shared by ``examples/cifar10.py`` (``--recipe``; its
options' defaults are ``DEFAULTS``), ``training.train.fit`` and the experiments (which train with ``fit``).

A recipe sets some of the settings below and leaves the rest at ``DEFAULTS``, the paper's fine-tuning recipe sized
for a CPU. The settings fall in four groups; a run's budget (epochs, batch size) and its data belong to the run.

    optimisation   optimizer, lr, momentum, weight_decay, clip, warmup, schedule, end_lr
    loss           label_smoothing
    batches        randaugment ("N,M" or None), random_erasing, mixup, cutmix      (data.pipeline.Augmentation)
    the model's    dropout, stochastic_depth                                        (the network's own rates)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.pipeline import Augmentation
from .optim import SGD, Adam, AdamW, decay_mask

DEFAULTS: dict[str, Any] = {
    # the paper's fine-tuning recipe: SGD with momentum, clipping at global norm 1, linear warm-up then cosine decay,
    # no weight decay (PAPER.md); the rate and the warm-up's length sized for short runs on a CPU
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "clip": 1.0, "warmup": "5%",
    "schedule": "cosine", "end_lr": 0.0,
    "label_smoothing": 0.0,
    "randaugment": None, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "dropout": 0.0, "stochastic_depth": 0.0,
}
MODEL_SETTINGS = ("dropout", "stochastic_depth")

# Named sets of settings: each changes some of DEFAULTS (and, for the command line, may size the run: batch_size,
# epochs, config). Every setting can still be given on its own, and wins.
RECIPES: dict[str, dict[str, Any]] = {
    # DEFAULTS themselves
    "finetune": {},
    # the official fine-tuning hyper-parameters (the official Mixer fine-tuning configuration, PAPER.md)
    "paper-finetune": {"batch_size": 512, "lr": 0.03, "warmup": "500", "momentum": 0.9, "clip": 1.0,
                       "weight_decay": 0.0},
    # the paper's pre-training recipe as big_vision's configs/mlp_mixer_i1k.py runs it: Adam with decoupled weight
    # decay on the kernels (its wd 1e-4 is not scaled by the base rate: 0.1 here), clipping at 1, warm-up (10k of
    # ~94k steps there: 10%) then linear decay to 1e-5 of the base rate, RandAugment(2, 15), mixup 0.5 (big_vision
    # mixes with probability 0.5; here every batch, alpha 0.5), stochastic depth 0.1 (its batch 4096 and 300 epochs
    # are left to --batch-size and --epochs)
    "pretrain": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "clip": 1.0, "warmup": "10%",
                 "schedule": "linear", "end_lr": 1e-8, "randaugment": "2,15", "mixup": 0.5, "stochastic_depth": 0.1},
    # the best documented from-scratch CIFAR-10 Mixer (omihub777/MLP-Mixer-CIFAR: Mixer-nano = tiny/4, 90.83% in
    # 300 epochs): Adam, lr 1e-3, L2 5e-5, batch 128, 5 warm-up epochs, cosine to 1e-6, label smoothing 0.1, CutMix,
    # no clipping; its AutoAugment is RandAugment(2, 9) here, its beta2 0.99 is 0.999, its CutMix every other batch
    # is every batch
    "scratch-cifar": {"config": "tiny/4", "optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-5, "batch_size": 128,
                      "epochs": 300, "warmup": "5ep", "schedule": "cosine", "end_lr": 1e-6, "label_smoothing": 0.1,
                      "randaugment": "2,9", "cutmix": 1.0, "clip": 0.0},
}


def recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """Every setting of DEFAULTS as the recipe ``name`` has it, then ``overrides`` (None values ignored).
    The run-sizing entries a recipe may carry for the command line (batch_size, epochs, config) are left out."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a recipe setting (the settings: {', '.join(DEFAULTS)})")
    chosen = {k: v for k, v in RECIPES[name].items() if k in DEFAULTS}
    return {**DEFAULTS, **chosen, **{k: v for k, v in overrides.items() if v is not None}}


def make_optimizer(settings: Mapping[str, Any], param_names: Any) -> SGD | Adam:
    """The optimiser of ``settings["optimizer"]`` (sgd, adam, adamw). Weight decay, when asked for, goes to the
    kernels alone (the official code's mask: no bias, no LayerNorm parameter decays); sgd and adamw decay the
    weights apart from the gradient (decoupled), adam adds it to the gradient (L2)."""
    mask, decay = decay_mask(param_names), settings["weight_decay"]
    name = settings["optimizer"]
    if name == "sgd":
        return SGD(momentum=settings["momentum"], weight_decay=decay, decay_mask=mask)
    if name == "adamw":
        return AdamW(weight_decay=decay, decay_mask=mask)
    if name == "adam":
        return Adam(l2=decay, decay_mask=mask)
    raise ValueError(f"unknown optimizer {name!r}: sgd, adam or adamw")


def augmentation(settings: Mapping[str, Any], crop_padding: int = 0, flip: bool = False) -> Augmentation:
    """What the settings do to each training batch, after a random crop of ``crop_padding`` pixels and ``flip``."""
    strong = None
    if settings["randaugment"]:
        num_ops, magnitude = (float(v) for v in str(settings["randaugment"]).split(","))
        strong = (int(num_ops), magnitude)
    return Augmentation(crop_padding, flip, strong, settings["random_erasing"], settings["mixup"], settings["cutmix"])


def describe(settings: Mapping[str, Any]) -> str:
    """The settings in words, for reports: e.g. "SGD momentum 0.9, clipping at global norm 1, warm-up 5% then
    cosine decay to 0, no weight decay"."""
    s = settings
    words = ["SGD momentum " + f"{s['momentum']:g}" if s["optimizer"] == "sgd" else
             {"adam": "Adam", "adamw": "AdamW"}[s["optimizer"]]]
    words.append(f"clipping at global norm {s['clip']:g}" if s["clip"] else "no clipping")
    words.append(f"warm-up {s['warmup']} then {s['schedule']} decay to {s['end_lr']:g}")
    decay = {"adam": "L2"}.get(s["optimizer"], "decoupled weight decay")
    words.append(f"{decay} {s['weight_decay']:g}" if s["weight_decay"] else "no weight decay")
    for key, say in [("label_smoothing", "label smoothing"), ("randaugment", "RandAugment"),
                     ("random_erasing", "random erasing"), ("mixup", "mixup"), ("cutmix", "CutMix"),
                     ("dropout", "dropout"), ("stochastic_depth", "stochastic depth")]:
        if s[key]:
            words.append(f"{say} {s[key]}")
    return ", ".join(words)
