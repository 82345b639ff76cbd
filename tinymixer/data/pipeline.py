"""A training batch, from uint8 images to the model's input: the one path every training loop takes
(``examples/cifar10.py``, ``training.train.fit``, the experiments).

    uint8 images of the batch --resize--> --crop, flip--> --RandAugment--> --random erasing--> [transform]
        --> scale to [-1, 1] --> mixup or CutMix with a partner batch --> float images, labels, (partner labels, lam)

Every random choice is drawn for the *whole* batch from one generator, in a fixed order (crop and flip,
RandAugment, erasing, then CutMix or mixup), and applied to the rows of it this process holds (``rows``): N
processes of a data-parallel run see exactly the one-process batch, and a run that draws from
``default_rng([seed, epoch, step])`` sees the same batches when resumed at any step. Nothing is drawn for an
augmentation that is off, so turning one on leaves the others' random numbers as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import normalize, resize_batch
from .augment import (
    apply_augmentation,
    apply_cutmix,
    apply_randaugment,
    apply_random_erasing,
    draw_augmentation,
    draw_cutmix,
    draw_mixup,
    draw_randaugment,
    draw_random_erasing,
)


@dataclass(frozen=True)
class Augmentation:
    """What is done to a training batch (all off by default): ``crop_padding`` pixels of random crop, ``flip``
    left-right, ``randaugment`` (N operations, magnitude M) or None, ``random_erasing`` (each image's chance),
    ``mixup`` (alpha) or ``cutmix`` (alpha; one of the two)."""

    crop_padding: int = 0
    flip: bool = False
    randaugment: tuple[int, float] | None = None
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        if self.mixup and self.cutmix:
            raise ValueError("mixup and CutMix are two ways to mix a batch: choose one")


Mix = tuple[np.ndarray, float]  # the partners' labels and the share lam of each image that is its own


def training_batch(images: np.ndarray, labels: np.ndarray, index: np.ndarray, rng: np.random.Generator,
                   augmentation: Augmentation, size: tuple[int, int] | None = None, dtype: Any = np.float32,
                   rows: slice = slice(None), transform: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, Mix | None]:
    """The batch of ``images[index]`` (uint8 (N, H, W, C) and their labels) as the model takes it: this process's
    ``rows`` of it, resized to ``size`` (H, W) when given, augmented, passed through ``transform`` (a uint8 batch
    to a uint8 batch of the same shape, e.g. a fixed permutation of the pixels) and scaled to [-1, 1] in
    ``dtype``. Returns the images (n, H, W, C), their labels (n,) and, with mixup or CutMix, the mix (the
    partners' labels, lam) for ``train.run_step``; else None."""
    a, n = augmentation, len(index)
    draws = draw_augmentation(rng, n, a.crop_padding, a.flip)  # 1. crop and flip
    strong = draw_randaugment(rng, n, int(a.randaugment[0]), a.randaugment[1]) if a.randaugment else None  # 2.
    erasing = draw_random_erasing(rng, n, a.random_erasing) if a.random_erasing else None  # 3.

    def augmented(which: Any) -> np.ndarray:  # the batch's positions ``which``, as uint8 images
        batch = images[index[which]]
        batch = resize_batch(batch, size) if size is not None else batch
        batch = apply_augmentation(batch, draws, which)
        batch = apply_randaugment(batch, strong, which) if strong is not None else batch
        batch = apply_random_erasing(batch, erasing, which) if erasing is not None else batch
        return transform(batch) if transform is not None else batch

    mine = augmented(rows)
    own_labels = labels[index[rows]]
    if not (a.mixup or a.cutmix):
        return normalize(mine, dtype), own_labels, None
    cut = draw_cutmix(rng, n, a.cutmix) if a.cutmix else None  # 4. the partners (and CutMix's box)
    lam, partner = draw_mixup(rng, n, a.mixup) if a.mixup else (None, cut["partner"])
    theirs = partner[rows]
    others = augmented(theirs)
    if cut is not None:  # paste a box of the partner; lam: the share of the image left its own
        mixed, lam = apply_cutmix(mine, others, cut)
        mixed = normalize(mixed, dtype)
    else:
        mixed = lam * normalize(mine, dtype) + (1.0 - lam) * normalize(others, dtype)
        mixed = mixed.astype(dtype, copy=False)
    return mixed, own_labels, (labels[index[theirs]], lam)
