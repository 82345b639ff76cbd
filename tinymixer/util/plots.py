"""Figures: learning curves and the confusion matrix, written to PNG files (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: list[dict[str, Any]], path: Path | str, split: str = "test") -> Path:
    """Loss and accuracy per epoch, on the training set and on the evaluation ``split`` ("test" or "validation":
    the records' keys are ``{split}_loss``, ``{split}_accuracy``), and the learning rate: one PNG, three panels."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], "o-", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], "o-", label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_lr.plot(epochs, [h["lr"] for h in history], "o-")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="schedule")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only, also on short runs
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(counts: np.ndarray, class_names: list[str], path: Path | str, title: str = "") -> Path:
    """The confusion matrix as an image, rows = true class, columns = prediction, each row as a fraction."""
    plt = _pyplot()
    fractions = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.55 * k))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    accuracy = f"accuracy {100 * np.trace(counts) / max(1, counts.sum()):.2f}%"
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: {accuracy}" if title else accuracy)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if fractions[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
