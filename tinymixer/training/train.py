"""One training step, and a small training loop for in-memory data (lessons, notebooks, tests).

``examples/cifar10.py`` is the full-featured loop (checkpoints, resume, Ctrl-C, plots); both use ``train_step``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.pipeline import Augmentation, training_batch
from ..nn.blocks import masks_rows
from ..nn.layers import dense_backward, dense_forward, softmax_cross_entropy
from ..nn.network import HEAD
from .evaluate import evaluate
from .optim import SGD, clip_by_global_norm, warmup_cosine, warmup_steps


def train_step(model: Any, optimizer: SGD, images: Any, labels: np.ndarray, lr: float, clip: float = 1.0,
               label_smoothing: float = 0.0, mix: tuple[np.ndarray, float] | None = None, comm: Any = None,
               global_batch: int | None = None, accumulate: int = 1, head_only: bool = False, masks: Any = None
               ) -> tuple[Any, Any]:
    """forward -> loss -> backward -> clip the global norm -> update. Returns (loss, logits), both on the device.

    ``mix = (partner_labels, lam)`` trains on a mixup batch: the loss is lam * CE(labels) + (1 - lam) * CE(partner).

    ``accumulate = K``: the batch goes through forward and backward in K parts (one after the other, so the
    activations of only one part are in memory at a time) whose gradients are added up before the one update: the
    same update as the whole batch at once, to float rounding, for a batch that would not fit (one extra buffer
    of the gradients' size holds the sum).

    ``masks``: the dropout and stochastic-depth masks of these images (``model.draw_masks``; needed when the model
    has those regularisers), cut to each part's rows here.

    ``head_only``: train the head alone, the rest frozen (a linear probe on the model's features): the features
    are computed in an evaluation pass, only the head's gradients are formed, and only the head is updated.

    Data parallel (``comm`` from ``tinymixer.training.distributed`` with several ranks): ``images`` are this rank's
    share of a batch of ``global_batch`` images. The loss and dL/dlogits are weighted by share / global_batch, so that
    the gradients summed over the ranks (one all-reduce of ``model.grad_buffer``) are the whole batch's gradient
    and every rank takes the same step; the returned loss is this rank's part of the batch's mean loss (their sum
    over the ranks is the batch's loss)."""
    batch = global_batch or len(labels)
    names = list(HEAD) if head_only else list(model.params)
    buffer = _gradients_of(model, names)  # the part of model.grad_buffer that this step fills and all-reduces
    total, loss_sum, logits_parts = None, 0.0, []
    part, extra = divmod(len(labels), accumulate)  # K parts as equal as can be, the first ones one image longer
    end = 0
    for k in range(accumulate):
        size = part + (k < extra)
        rows, end = slice(end, end + size), end + size  # consecutive images: a view of a device array
        part_mix = None if mix is None else (mix[0][rows], mix[1])
        part_masks = masks_rows(masks, rows) if masks is not None and accumulate > 1 else masks
        loss, logits = _forward_backward(model, images[rows], labels[rows], label_smoothing, part_mix,
                                         size / batch, head_only, part_masks)
        loss_sum, logits_parts = loss_sum + loss, logits_parts + [logits]
        if accumulate > 1 and total is None:
            total = buffer.copy()  # the next part's backward overwrites the buffer: keep the sum apart
        elif accumulate > 1:
            total += buffer
    if total is not None:
        buffer[...] = total
    if comm is not None and comm.size > 1:
        comm.allreduce_sum_(buffer)  # in place: every rank now holds the whole batch's gradient
    if head_only:
        params, grads = {k: model.params[k] for k in names}, {k: model.grads[k] for k in names}
    else:  # the whole buffers (flat.FlatArrays): clipping and the update act on them at once
        params, grads = model.params, model.grads
    if clip:
        clip_by_global_norm(grads, clip)
    optimizer.step(params, grads, lr)
    logits = logits_parts[0] if len(logits_parts) == 1 else model.xp.concatenate(logits_parts)
    return loss_sum, logits


def _forward_backward(model: Any, images: Any, labels: np.ndarray, label_smoothing: float,
                      mix: tuple[np.ndarray, float] | None, weight: float, head_only: bool, masks: Any = None
                      ) -> tuple[Any, Any]:
    """One forward and backward pass of (part of) a batch whose loss counts with ``weight`` in the batch's mean;
    fills the model's gradients (the head's alone with ``head_only``). Returns (weighted loss, logits)."""
    if head_only:
        features = model.features(images)  # (b, C), an evaluation pass: nothing kept for a backward
        logits, head_cache = dense_forward(features, model.params["head/kernel"], model.params["head/bias"])
    else:
        logits = model.forward(images, masks=masks)
    loss, dlogits = softmax_cross_entropy(logits, labels, label_smoothing)
    if mix is not None:
        partner, lam = mix
        loss_b, dlogits_b = softmax_cross_entropy(logits, partner, label_smoothing)
        loss, dlogits = lam * loss + (1.0 - lam) * loss_b, lam * dlogits + (1.0 - lam) * dlogits_b
    if weight != 1.0:  # a part of the batch (accumulation, or this rank's share): its part of the batch's mean
        loss, dlogits = loss * weight, dlogits * weight
    if head_only:
        _, model.grads["head/kernel"][...], model.grads["head/bias"][...] = dense_backward(dlogits, head_cache)
    else:
        model.backward(dlogits)
    return loss, logits


def _gradients_of(model: Any, names: list[str]) -> Any:
    """The contiguous part of ``model.grad_buffer`` that holds the gradients of ``names`` (all of them, or the
    head's, which come last in the official order)."""
    buffer = model.grad_buffer
    if len(names) == len(model.params):
        return buffer
    if list(model.params)[-len(names):] != names:
        raise ValueError(f"{names} are not the last parameters of the model")
    return buffer[buffer.size - sum(model.params[k].size for k in names):]


def fit(model: Any, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int = 64, lr: float = 0.05,
        warmup: int | str = "5%", clip: float = 1.0, momentum: float = 0.9, crop_padding: int = 0, flip: bool = False,
        seed: int = 0, test: tuple[np.ndarray, np.ndarray] | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        progress: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train on uint8 images (N, H, W, C) with the paper's recipe (SGD momentum, clipping, warm-up + cosine).

    ``warmup``: steps (50), epochs ("2ep") or a percentage of the run ("5%"); longer than the run is an error.
    ``transform``: applied to every uint8 training batch (B, H, W, C) after the crop and flip and before scaling,
    as an input pipeline would apply e.g. a fixed permutation of the pixels; it must return a uint8 batch of the
    same shape. The test images are not transformed here: give ``test`` as the model should see it.
    ``progress``: called with each epoch's record as soon as it is complete.
    Returns one record per epoch: train loss and accuracy, test loss and accuracy when ``test`` is given, and
    ``seconds``, the wall-clock time since the start of training (the evaluations included).
    """
    optimizer = SGD(momentum=momentum)
    steps_per_epoch = len(labels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(labels)} images is less than one batch of {batch_size}; lower batch_size")
    total = epochs * steps_per_epoch
    warmup_length = warmup_steps(warmup, total, steps_per_epoch)
    rng = np.random.default_rng(seed)
    augmentation = Augmentation(crop_padding=crop_padding, flip=flip)
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        loss_sum, correct = model.xp.zeros((), np.float64), model.xp.zeros((), np.int64)  # summed on the device
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            batch, batch_labels, _ = training_batch(images, labels, index, rng, augmentation, dtype=model.dtype,
                                                    transform=transform)  # the one batch path (data/pipeline.py)
            lr_now = warmup_cosine(epoch * steps_per_epoch + step, lr, total, warmup_length)
            masks = model.draw_masks(rng, len(index))  # dropout / stochastic depth, when the model has them
            loss, logits = train_step(model, optimizer, batch, batch_labels, lr_now, clip, masks=masks)
            loss_sum += loss * len(index)  # no read back per step: the GPU is not waited for until the epoch's end
            correct += (logits.argmax(axis=1) == model.xp.asarray(labels[index])).sum()
        seen = steps_per_epoch * batch_size
        record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / seen, "train_accuracy": int(correct) / seen}
        if test is not None:
            result = evaluate(model, test[0], test[1])
            record.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if progress is not None:
            progress(record)
    return history
