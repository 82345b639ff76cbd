"""What every lesson shares: the quick mode, the model the training lessons train, printing the library's code,
and saving and showing figures.

- ``TINYMIXER_QUICK=1`` shrinks sizes and steps so a lesson runs in seconds (CI runs every lesson this way); the
  lessons that train use ``training_model``, a smaller Mixer in quick mode, so that seconds still show their point.
- Figures are saved to ``$TINYMIXER_FIGURES`` (default: ``lessons/figures/``) and shown when there is a screen.
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
from pathlib import Path

import matplotlib

INTERACTIVE = "ipykernel" in sys.modules or bool(os.environ.get("DISPLAY"))
if not INTERACTIVE:
    matplotlib.use("Agg")  # headless: write files only
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

import tinymixer as tm  # noqa: E402

QUICK = os.environ.get("TINYMIXER_QUICK") == "1"
FIGURES = Path(os.environ.get("TINYMIXER_FIGURES", Path(__file__).resolve().parent / "figures"))


def pick(full, quick):
    """The full-size value normally, the small one in quick mode."""
    return quick if QUICK else full


def code_after_docstring(function) -> str:
    """A library function's code after its docstring, dedented: the part of its source a lesson shows."""
    return textwrap.dedent(inspect.getsource(function).split('"""')[-1]).strip("\n")


def print_code(function) -> None:
    """Print a library function's code after its docstring, under a line that names the function."""
    print(f"{function.__module__}.{function.__qualname__}, after its docstring:")
    print(textwrap.indent(code_after_docstring(function), "    "))
    print()


def print_reference(*functions) -> None:
    """Print functions of ``tinymixer/nn/reference.py`` whole: the docstring with the equation, the numbered
    steps of the forward, the backward undoing them. (The library runs the fast versions in ``nn/layers.py`` and
    ``nn/blocks.py``: the same functions, held equal to these by ``tests/test_reference.py``.)"""
    for function in functions:
        print(f"# {function.__module__}.{function.__qualname__}")
        print(inspect.getsource(function))


def training_model(num_classes: int, image_size: int, seed: int = 0) -> tm.MlpMixer:
    """The Mixer the lessons train: micro/4 normally; in quick mode 2 blocks of width 32 (patches of 4 pixels):
    a thirteenth of micro/4's arithmetic per image, a quarter of its time on a CPU, so that a few seconds of
    training still learn something."""
    if QUICK:
        return tm.MlpMixer(num_classes=num_classes, num_blocks=2, patch_size=4, hidden_dim=32, tokens_mlp_dim=16,
                           channels_mlp_dim=64, image_size=image_size, seed=seed)
    return tm.MlpMixer.from_name("micro/4", num_classes=num_classes, image_size=image_size, seed=seed)


def learning_curves(runs: dict, loss_title: str = "loss", accuracy_title: str = "accuracy") -> plt.Figure:
    """Loss and accuracy per epoch of ``fit`` runs ({name: history}), train solid and test dashed, one colour a run."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for name, history in runs.items():
        epochs = [h["epoch"] for h in history]
        line = ax1.plot(epochs, [h["train_loss"] for h in history], label=f"{name}, train")[0]
        ax1.plot(epochs, [h["test_loss"] for h in history], "--", color=line.get_color(), label=f"{name}, test")
        ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], color=line.get_color(), label=f"{name}, train")
        ax2.plot(epochs, [100 * h["test_accuracy"] for h in history], "--", color=line.get_color(),
                 label=f"{name}, test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title=loss_title)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title=accuracy_title)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def save_figure(fig: plt.Figure, name: str) -> None:
    """Save the figure as FIGURES/name.png, print where it went, and show it when interactive.

    It returns nothing on purpose: a notebook cell ending with this call then displays the figure only, not a
    ``PosixPath(...)`` after it.
    """
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")
    if INTERACTIVE:
        plt.show()
    plt.close(fig)
