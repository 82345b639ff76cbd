"""One training step, and a small training loop for in-memory data (lessons, notebooks, tests).

``examples/cifar10.py`` is the full-featured loop (checkpoints, resume, Ctrl-C, plots); both use ``train_step``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import augment, normalize
from .evaluate import evaluate
from .layers import softmax_cross_entropy
from .optim import SGD, clip_by_global_norm, warmup_cosine, warmup_steps


def train_step(model: Any, optimizer: SGD, images: Any, labels: np.ndarray, lr: float, clip: float = 1.0,
               label_smoothing: float = 0.0, mix: tuple[np.ndarray, float] | None = None, comm: Any = None,
               global_batch: int | None = None) -> tuple[Any, Any]:
    """forward -> loss -> backward -> clip the global norm -> update. Returns (loss, logits), both on the device.

    ``mix = (partner_labels, lam)`` trains on a mixup batch: the loss is lam * CE(labels) + (1 - lam) * CE(partner).

    Data parallel (``comm`` from ``tinymixer.distributed`` with several ranks): ``images`` are this rank's share
    of a batch of ``global_batch`` images. The loss and dL/dlogits are weighted by share / global_batch, so that
    the gradients summed over the ranks (one all-reduce of ``model.grad_buffer``) are the whole batch's gradient
    and every rank takes the same step; the returned loss is this rank's part of the batch's mean loss (their sum
    over the ranks is the batch's loss)."""
    logits = model.forward(images)
    loss, dlogits = softmax_cross_entropy(logits, labels, label_smoothing)
    if mix is not None:
        partner, lam = mix
        loss_b, dlogits_b = softmax_cross_entropy(logits, partner, label_smoothing)
        loss, dlogits = lam * loss + (1.0 - lam) * loss_b, lam * dlogits + (1.0 - lam) * dlogits_b
    parallel = comm is not None and comm.size > 1
    if parallel:
        weight = len(labels) / global_batch
        loss, dlogits = loss * weight, dlogits * weight
    model.backward(dlogits)
    if parallel:
        comm.allreduce_sum_(model.grad_buffer)  # in place, every rank now holds the whole batch's gradient
    if clip:
        clip_by_global_norm(model.grads, clip)
    optimizer.step(model.params, model.grads, lr)
    return loss, logits


def fit(model: Any, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int = 64, lr: float = 0.05,
        warmup: int | str = "5%", clip: float = 1.0, momentum: float = 0.9, crop_padding: int = 0, flip: bool = False,
        seed: int = 0, test: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict[str, float]]:
    """Train on uint8 images (N, H, W, C) with the paper's recipe (SGD momentum, clipping, warm-up + cosine).

    ``warmup``: steps (50), epochs ("2ep") or a percentage of the run ("5%"); longer than the run is an error.
    Returns one record per epoch: train loss and accuracy, and test loss and accuracy when ``test`` is given.
    """
    optimizer = SGD(momentum=momentum)
    steps_per_epoch = len(labels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(labels)} images is less than one batch of {batch_size}; lower batch_size")
    total = epochs * steps_per_epoch
    warmup_length = warmup_steps(warmup, total, steps_per_epoch)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        loss_sum, correct = 0.0, 0
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            batch = augment(images[index], rng, crop_padding, flip) if (crop_padding or flip) else images[index]
            lr_now = warmup_cosine(epoch * steps_per_epoch + step, lr, total, warmup_length)
            loss, logits = train_step(model, optimizer, normalize(batch, model.dtype), labels[index], lr_now, clip)
            loss_sum += float(loss) * len(index)
            correct += int((logits.argmax(axis=1) == model.xp.asarray(labels[index])).sum())
        seen = steps_per_epoch * batch_size
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        if test is not None:
            result = evaluate(model, test[0], test[1])
            record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
        history.append(record)
    return history
