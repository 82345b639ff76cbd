"""One training step, the pieces a run's options add around it, and a small training loop for in-memory data.

    train_step = forward -> loss -> backward -> update      (the core, one screen: the paper's step)
    run_step   = gradients (with label smoothing, mixup, accumulation or the head alone) -> all-reduce -> update

``examples/cifar10.py`` is the full-featured loop (checkpoints, resume, Ctrl-C, plots) and takes its steps through
``run_step``; ``fit`` (lessons, notebooks, tests, experiments) through ``train_step``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.pipeline import Mix, training_batch
from ..nn.blocks import masks_rows
from ..nn.layers import dense_backward, dense_forward, softmax_cross_entropy
from ..nn.network import HEAD
from ..util.numbers import is_whole
from . import recipes
from .evaluate import evaluate
from .optim import SGD, Adam, clip_by_global_norm, schedule, warmup_steps

Optimizer = SGD | Adam  # (AdamW is an Adam)


def train_step(model: Any, optimizer: Optimizer, images: Any, labels: Any, lr: float, clip: float = 1.0, *,
               masks: Any = None, **options: Any) -> tuple[Any, Any]:
    """One step of training: forward -> loss -> backward -> clip the global norm -> update, in place.

    images (B, H, W, C) float, labels (B,) integers; ``masks``: the dropout and stochastic-depth masks of these
    images (``model.draw_masks``), for a model with those regularisers. Returns (loss, logits), both on the device
    (nothing waits for the GPU). ``run_step`` below is this step with a run's options around it (label smoothing,
    mixup, accumulation, head-only, many processes); passing those here still works, with a DeprecationWarning."""
    if options:
        warnings.warn(f"train_step({', '.join(options)}=...): a run's options go to "
                      f"tinymixer.training.train.run_step", DeprecationWarning, stacklevel=2)
        return run_step(model, optimizer, images, labels, lr, clip, masks=masks, **options)
    logits = model.forward(images, masks=masks)  # (B, K); the layers keep what the backward needs
    loss, dlogits = softmax_cross_entropy(logits, labels)  # the batch's mean loss; dL/dlogits (B, K)
    model.backward(dlogits)  # model.grads: dL/dparams, the same names and shapes as model.params
    update(model.params, model.grads, optimizer, lr, clip)
    return loss, logits


def update(params: dict[str, Any], grads: dict[str, Any], optimizer: Optimizer, lr: float, clip: float) -> None:
    """Clip the gradients' global norm at ``clip`` (0: no clipping), then the optimiser's update of ``params``."""
    if clip:
        clip_by_global_norm(grads, clip)
    optimizer.step(params, grads, lr)


# ----------------------------------------------------------------------------------------------------------------
# A run's options around the core step. Each piece is the core's forward -> loss -> backward with one thing added;
# ``run_step`` puts them together in the order the core has them: gradients, (all-reduce), update.


def cross_entropy(logits: Any, labels: Any, label_smoothing: float = 0.0, mix: Mix | None = None,
                  weight: float = 1.0) -> tuple[Any, Any]:
    """The loss and dL/dlogits: softmax cross-entropy, or on a mixup/CutMix batch ``mix = (partner_labels, lam)``
    the mixed loss lam * CE(labels) + (1 - lam) * CE(partner_labels) (each image is lam its own, 1 - lam its
    partner); times ``weight``, the share these images have in the mean of a larger batch (a part of it:
    accumulation, or this process's share)."""
    loss, dlogits = softmax_cross_entropy(logits, labels, label_smoothing)
    if mix is not None:
        partner, lam = mix
        loss_b, dlogits_b = softmax_cross_entropy(logits, partner, label_smoothing)
        loss, dlogits = lam * loss + (1.0 - lam) * loss_b, lam * dlogits + (1.0 - lam) * dlogits_b
    if weight != 1.0:
        loss, dlogits = loss * weight, dlogits * weight
    return loss, dlogits


def gradients(model: Any, images: Any, labels: Any, *, masks: Any = None, label_smoothing: float = 0.0,
              mix: Mix | None = None, weight: float = 1.0) -> tuple[Any, Any]:
    """The core's forward -> loss -> backward, filling ``model.grads``; the loss counts with ``weight`` in the
    mean of a larger batch (``cross_entropy``). Returns (weighted loss, logits)."""
    logits = model.forward(images, masks=masks)
    loss, dlogits = cross_entropy(logits, labels, label_smoothing, mix, weight)
    model.backward(dlogits)
    return loss, logits


def accumulated_gradients(model: Any, images: Any, labels: Any, parts: int, *, masks: Any = None,
                          label_smoothing: float = 0.0, mix: Mix | None = None, batch: int | None = None,
                          head_only: bool = False) -> tuple[Any, Any]:
    """``gradients`` (``head_gradients`` with ``head_only``) of the images in ``parts`` consecutive parts, one after
    the other (the activations of one part in memory at a time), summed into ``model.grads``: the whole batch's
    gradients, to float rounding, for a batch that would not fit at once (one extra buffer of the gradients' size
    holds the sum). Each part's loss counts with its share of the ``batch`` images the loss is the mean over
    (default: these images)."""
    batch = batch or len(labels)
    parts = accumulation_parts(parts, len(labels))

    def one(rows: slice) -> tuple[Any, Any]:  # a part: consecutive images, a view of a device array
        part_mix = None if mix is None else (mix[0][rows], mix[1])
        weight = (rows.stop - rows.start) / batch
        if head_only:  # the features come from an evaluation pass: no masks
            return head_gradients(model, images[rows], labels[rows], label_smoothing=label_smoothing, mix=part_mix,
                                  weight=weight)
        return gradients(model, images[rows], labels[rows], masks=masks_rows(masks, rows),
                         label_smoothing=label_smoothing, mix=part_mix, weight=weight)

    if parts == 1:
        return one(slice(0, len(labels)))
    names = list(HEAD) if head_only else list(model.params)
    total, loss_sum, logits_parts, end = None, 0.0, [], 0
    size, extra = divmod(len(labels), parts)  # parts as equal as can be, the first ones one image longer
    for k in range(parts):
        rows, end = slice(end, end + size + (k < extra)), end + size + (k < extra)
        loss, logits = one(rows)
        loss_sum, logits_parts = loss_sum + loss, logits_parts + [logits]
        filled = _buffer_of(model, names)  # what this part's backward wrote
        if total is None:
            total = filled.copy()  # the next part's backward overwrites the buffer: keep the sum apart
        else:
            total += filled
    _buffer_of(model, names)[...] = total
    return loss_sum, model.xp.concatenate(logits_parts)


def head_gradients(model: Any, images: Any, labels: Any, *, label_smoothing: float = 0.0, mix: Mix | None = None,
                   weight: float = 1.0) -> tuple[Any, Any]:
    """``gradients`` of the head alone, the rest frozen (a linear probe on the model's features): the features come
    from an evaluation pass (nothing kept for a backward) and only the head's gradients are formed."""
    features = model.features(images)  # (b, C)
    logits, head_cache = dense_forward(features, model.params["head/kernel"], model.params["head/bias"])
    loss, dlogits = cross_entropy(logits, labels, label_smoothing, mix, weight)
    grads = model.gradients()
    _, grads["head/kernel"][...], grads["head/bias"][...] = dense_backward(dlogits, head_cache)
    return loss, logits


def run_step(model: Any, optimizer: Optimizer, images: Any, labels: Any, lr: float, clip: float = 1.0, *,
             masks: Any = None, label_smoothing: float = 0.0, mix: Mix | None = None, accumulate: int = 1,
             head_only: bool = False, comm: Any = None, global_batch: int | None = None) -> tuple[Any, Any]:
    """``train_step`` with a run's options (``examples/cifar10.py`` takes every step through it; with every option
    off it is ``train_step``, bit for bit): ``label_smoothing``; ``mix`` (a mixup/CutMix batch, see
    ``cross_entropy``); ``accumulate = K`` (``accumulated_gradients``); ``head_only`` (``head_gradients``: only the
    head is updated; with ``accumulate`` too, in parts).

    Data parallel (``comm`` from ``tinymixer.training.distributed`` with several ranks): ``images`` are this rank's
    share of a batch of ``global_batch`` images. The loss and dL/dlogits are weighted by share / global_batch, so
    that the gradients summed over the ranks (one all-reduce of the gradient buffer) are the whole batch's and
    every rank takes the same step; the returned loss is this rank's part of the batch's mean loss (their sum over
    the ranks is the batch's loss)."""
    loss, logits = accumulated_gradients(model, images, labels, accumulate, masks=masks,
                                         label_smoothing=label_smoothing, mix=mix, batch=global_batch,
                                         head_only=head_only)
    names = list(HEAD) if head_only else list(model.params)
    if comm is not None and comm.size > 1:
        comm.allreduce_sum_(_buffer_of(model, names))  # in place: every rank now holds the whole batch's gradient
    if head_only:
        update({k: model.params[k] for k in names}, {k: model.grads[k] for k in names}, optimizer, lr, clip)
    else:  # the whole buffers (flat.FlatArrays): clipping and the update act on them at once
        update(model.params, model.grads, optimizer, lr, clip)
    return loss, logits


def _check_fit_arguments(images: Any, labels: Any, epochs: Any, batch_size: Any, crop_padding: Any,
                         test: Any) -> None:
    """``fit``'s data and sizes, each with what to do when it is wrong (before anything trains)."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("crop_padding", crop_padding)):
        if not is_whole(value, int(name != "crop_padding")):
            raise ValueError(f"{name} must be a whole number, at least {int(name != 'crop_padding')}; got {value!r}")
    for what, (x, y) in (("images", (images, labels)), ("test images", test or (None, None))):
        if x is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 4 or x.dtype != np.uint8:
            grey = " (grey images: add a channel axis, images[..., None])" if x.ndim == 3 else ""
            raise ValueError(f"fit takes {what} as uint8 pixels (N, H, W, C), as a data set holds them, and scales "
                             f"them to [-1, 1] itself; got {x.dtype} {x.shape}{grey}. Images already scaled: "
                             f"(x * 127.5 + 127.5).round().astype(np.uint8) gives the pixels back")
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise ValueError(f"the labels of the {what} must be integers (N,), one per image: {len(x)} images, "
                             f"labels {y.dtype} {y.shape}")


def accumulation_parts(parts: int, batch: int) -> int:
    """``accumulate``, checked: a whole number of parts from 1 to the batch's images."""
    if not is_whole(parts, 1) or parts > batch:
        raise ValueError(f"accumulate={parts!r}: the batch of {batch} images is cut into that many parts; give a "
                         f"whole number from 1 to {batch}")
    return int(parts)


def _buffer_of(model: Any, names: list[str]) -> Any:
    """The contiguous part of the gradient buffer that holds the gradients of ``names`` (all of them, or the
    head's, which come last in the official order)."""
    buffer = model.grad_buffer
    if len(names) == len(model.params):
        return buffer
    if list(model.params)[-len(names):] != names:
        raise ValueError(f"{names} are not the last parameters of the model")
    return buffer[buffer.size - sum(model.params[k].size for k in names):]


def fit(model: Any, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int = 64,
        recipe: str = "finetune", lr: float | None = None, warmup: int | str | None = None, clip: float | None = None,
        momentum: float | None = None, label_smoothing: float | None = None, crop_padding: int = 0, flip: bool = False,
        seed: int = 0,
        test: tuple[np.ndarray, np.ndarray] | None = None, transform: Callable[[np.ndarray], np.ndarray] | None = None,
        progress: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train on uint8 images (N, H, W, C) with a recipe (``training.recipes``; by default the paper's fine-tuning
    recipe: SGD momentum 0.9, clipping at global norm 1, 5% warm-up then cosine decay, lr 0.05).

    ``lr``, ``warmup``, ``clip``, ``momentum``, ``label_smoothing``: given, they replace the recipe's. ``warmup``:
    steps (50), epochs ("2ep") or a percentage of the run ("5%"); longer than the run is an error. The recipe's
    optimiser, schedule, weight decay, label smoothing and batch augmentations (RandAugment, random erasing, mixup,
    CutMix) are applied; its dropout and stochastic depth are the model's own rates: where the recipe sets them,
    the model must have them (build it with them); otherwise the model's rates, if any, apply.
    ``transform``: applied to every uint8 training batch (B, H, W, C) after the augmentation and before scaling,
    as an input pipeline would apply e.g. a fixed permutation of the pixels; it must return a uint8 batch of the
    same shape. The test images are not transformed here: give ``test`` as the model should see it.
    ``progress``: called with each epoch's record as soon as it is complete.
    Returns one record per epoch: train loss and accuracy, test loss and accuracy when ``test`` is given, and
    ``seconds``, the wall-clock time since the start of training (the evaluations included).
    """
    _check_fit_arguments(images, labels, epochs, batch_size, crop_padding, test)
    settings = recipes.recipe(recipe, lr=lr, warmup=warmup, clip=clip, momentum=momentum,
                              label_smoothing=label_smoothing)
    if not settings["lr"] > 0 or settings["clip"] < 0:
        raise ValueError(f"lr must be positive (got {settings['lr']}) and clip 0 (off) or positive (got "
                         f"{settings['clip']})")
    for name in recipes.MODEL_SETTINGS:  # a recipe that regularises the model says so; the model decides
        if settings[name] and not hasattr(model, name):
            raise ValueError(f"the {recipe} recipe trains with {name} {settings[name]}, which a "
                             f"{type(model).__name__} does not have: choose a recipe without it")
        if settings[name] and settings[name] != getattr(model, name):
            raise ValueError(f"the {recipe} recipe trains with {name} {settings[name]}, the model has "
                             f"{getattr(model, name)}: build the model with {name}={settings[name]}")
    optimizer = recipes.make_optimizer(settings, model.params)
    steps_per_epoch = len(labels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(labels)} images is less than one batch of {batch_size}; lower batch_size")
    total = epochs * steps_per_epoch
    warmup_length = warmup_steps(settings["warmup"], total, steps_per_epoch)
    rng = np.random.default_rng(seed)
    augmentation = recipes.augmentation(settings, crop_padding, flip)
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        loss_sum, correct = model.xp.zeros((), np.float64), model.xp.zeros((), np.int64)  # summed on the device
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            batch, batch_labels, mix = training_batch(images, labels, index, rng, augmentation, dtype=model.dtype,
                                                      transform=transform)  # the one batch path (data/pipeline.py)
            lr_now = schedule(settings["schedule"], epoch * steps_per_epoch + step, settings["lr"], total,
                              warmup_length, settings["end_lr"])
            masks = model.draw_masks(rng, len(index))  # dropout / stochastic depth, when the model has them
            loss, logits = run_step(model, optimizer, batch, batch_labels, lr_now, settings["clip"], masks=masks,
                                    label_smoothing=settings["label_smoothing"], mix=mix)
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
