"""Using a trained model: logits for many images in batches, accuracy and loss, the confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host
from ..data import normalize, resize_batch
from ..nn.layers import softmax_cross_entropy
from ..util.numbers import is_whole
from .distributed import shard_of


def predict_logits(model: Any, images: np.ndarray, batch_size: int = 256, resize: bool = False) -> np.ndarray:
    """Logits (N, K) on the host for images (N, H, W, C): uint8 pixels (scaled to [-1, 1] here, batch by batch,
    and with ``resize`` first resized to the model's resolution, as the official evaluation does) or floats
    already scaled. Evaluation passes keep no caches."""
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be a whole number, at least 1; got {batch_size!r}")
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.dtype == np.uint8 and resize:
            batch = resize_batch(batch, model.image_size)
        if batch.dtype == np.uint8:
            batch = normalize(batch, model.dtype)
        outputs.append(to_host(model.forward(batch, train=False)))
    return np.concatenate(outputs) if outputs else np.zeros((0, model.num_classes), model.dtype)


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, comm: Any = None,
             resize: bool = False) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and the predicted classes of a labelled set.

    With ``comm`` (``tinymixer.training.distributed``, several ranks) each rank predicts its contiguous share of the
    set, and the loss sums and predictions are combined, so every rank gets the whole set's result."""
    if len(labels) == 0 or len(images) != len(labels):  # an accuracy of no images is no number
        raise ValueError(f"evaluate needs one label per image and at least one image; got {len(images)} images, "
                         f"{len(labels)} labels")
    rows = shard_of(len(labels), comm) if comm is not None else slice(None)
    logits = predict_logits(model, images[rows], batch_size, resize)
    loss, _ = softmax_cross_entropy(logits, labels[rows]) if len(logits) else (0.0, None)
    predictions = logits.argmax(axis=1)
    loss_sum = float(loss) * len(predictions)
    if comm is not None and comm.size > 1:
        loss_sum, predictions = comm.sum(loss_sum), comm.gather_rows(predictions)
    return {"loss": loss_sum / max(1, len(labels)), "accuracy": float((predictions == labels).mean()),
            "predictions": predictions}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = how many images of true class i were predicted as class j."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.dtype.kind not in "iu" or values.shape != labels.shape or (
                values.size and (values.min() < 0 or values.max() >= num_classes)):
            raise ValueError(f"{name} must be class indices from 0 to {num_classes - 1}, one per image as the "
                             f"labels; got {values.dtype} {values.shape}"
                             + (f" from {values.min()} to {values.max()}" if values.size else ""))
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def format_confusion_matrix(counts: np.ndarray, class_names: list[str]) -> str:
    """The confusion matrix as aligned text, rows = true class, columns = predicted class."""
    short = [name[:7] for name in class_names]
    width = max(len(s) for s in short + [str(counts.max())]) + 1
    first = max(len("true \\ predicted"), *(len(name) for name in class_names)) + 1
    lines = ["true \\ predicted".ljust(first) + "".join(s.rjust(width) for s in short)]
    for name, row in zip(class_names, counts, strict=True):
        lines.append(name.ljust(first) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
