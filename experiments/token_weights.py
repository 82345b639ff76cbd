"""Paper Fig. 5: the hidden units of the first token-mixing layers of a Mixer trained on real images, as pictures.

``MixerBlock_i/token_mixing/Dense_0/kernel`` has shape (S, D_S): column j is hidden unit j, one weight per patch,
so its S weights reshaped to the (H/P, W/P) patch grid are a picture of how the unit weighs the image's regions.
The paper shows the first three blocks' units, in pairs of opposite phase, sorted by the frequency of the filters.
Here, for each of the first (up to) three blocks:

* pairing: the two units whose weights are the most negatively correlated (Pearson, over the S patches) are paired
  and set aside, then the next most negatively correlated two of the rest, and so on (greedy; with an odd D_S the
  last unit stands alone);
* sorting: each unit's spatial frequency is the power-weighted mean |k| of the 2-D FFT of its picture (mean removed;
  k in cycles per patch, from numpy.fft.fftfreq on both axes, 0 to about 0.71): sum_k |k| |F(k)|^2 / sum_k |F(k)|^2;
  a pair's is the mean of its two units', and the pairs are shown from low to high frequency;
* each unit's colours are scaled to its own largest |weight| (red positive, blue negative).

The Mixer is trained with the other experiments' recipe (train.fit's fine-tuning recipe, crop and flip) at
``--lr-mixer`` (default 0.05, the recipe's documented rate; no sweep here: the pictures, not the last point of
accuracy, are the point; the sweep options do nothing in this script).

The same figure is drawn for the untrained model (the initial weights, paired and sorted the same way), so the
structure training adds is visible; the report gives each block's mean pair correlation and mean frequency, trained
and at initialisation.

    python experiments/token_weights.py                      # full: CIFAR-10, tiny/4, 20 epochs
    python experiments/token_weights.py --preset digits --data-dir /tmp/digits
    python experiments/token_weights.py --quick --data-dir DIR

The full preset is sized for CIFAR-10 (50,000 training images of 32x32x3, an 8x8 patch grid): it prints its
expected run time on this machine before it starts. Output in --out: report.md, results.json,
token_weights.png (trained), token_weights_init.png (untrained).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import tinymixer as tm

tm.tune_host()  # first, before NumPy loads its BLAS: threads that sleep at once, freed memory kept

import common
import numpy as np
from common import Planned, Preset, log

BLOCKS = 3  # the paper's Fig. 5 shows the first three blocks
PRESETS = {
    "full": Preset(sized_for="CIFAR-10 (50,000 training images, 32x32x3)", models=("tiny/4",), epochs=20,
                   batch_size=128, crop_padding=4, flip=True),
    "digits": Preset(sized_for="scikit-learn's 8x8 digits (1,437 training images, 8x8x1; a 4x4 patch grid)",
                     models=("micro/4",), epochs=30, batch_size=32, crop_padding=0, flip=False),
    "mnist": Preset(sized_for=common.MNIST_SIZED + " (a 7x7 patch grid)",
                    models=("micro/4",), epochs=30, batch_size=64, crop_padding=2, flip=False),
    "quick": Preset(sized_for="CI: a few hundred images, seconds", models=("micro/4",), epochs=2, batch_size=32,
                    crop_padding=4, flip=True, train_size=128, test_size=64),
}


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser("experiments/token_weights.py", __doc__.split("\n\n")[0], PRESETS, "token_weights")
    parser.add_argument("--model", default=None, choices=list(tm.SIZES), metavar="SIZE",
                        help="the Mixer size (default: the preset's; full: tiny/4)")
    args = parser.parse_args(argv)
    preset_name = "quick" if args.quick else args.preset
    preset = common.resolve(args, PRESETS)
    name = args.model or preset.models[0]
    data = common.load_data(args.data_dir, preset.train_size, preset.test_size, args.seed)
    common.require_batches(data, preset)
    model = common.build_model(name, data, args.seed)
    log(f"{name}: {common.describe(model)}")
    steps = preset.epochs * (len(data.train_labels) // preset.batch_size)
    expected = common.estimate([Planned(name, steps, preset.batch_size, len(data.test_labels))], data, args.seed)
    common.announce(expected, preset, preset_name, wait=not (args.yes or args.quick))
    start = time.perf_counter()
    lr = args.lr_mixer or common.DOCUMENTED_LR["Mixer"]

    initial = {k: tm.to_host(v).copy() for k, v in model.params.items()}
    result = common.train(model, data, preset, lr, seed=args.seed, curves=False, label=f"[{name}]")
    log(f"{name}: test accuracy {100 * result['test_accuracy']:.2f}%")
    trained = {k: tm.to_host(v) for k, v in model.params.items()}
    grid = (model.image_size[0] // model.patch_size, model.image_size[1] // model.patch_size)
    blocks = min(BLOCKS, model.num_blocks)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    analysis = {}
    for label, params, filename in [("trained", trained, "token_weights.png"),
                                    ("initial", initial, "token_weights_init.png")]:
        kernels = [params[f"MixerBlock_{i}/token_mixing/Dense_0/kernel"] for i in range(blocks)]  # (S, D_S) each
        analysis[label] = [analyse(kernel, grid) for kernel in kernels]
        plot_units(kernels, analysis[label], grid, out / filename,
                   f"{name}, {label}: token-mixing units of the first {blocks} blocks, paired by opposite phase, "
                   f"sorted by spatial frequency")
    moved = [float(np.linalg.norm(trained[k] - initial[k]) / np.linalg.norm(initial[k]))
             for k in (f"MixerBlock_{i}/token_mixing/Dense_0/kernel" for i in range(blocks))]
    results = {"experiment": "token_weights", "settings": common.settings(preset, preset_name, args, data) | {
               "model": name, "patch_size": model.patch_size, "grid": list(grid), "lr": lr},
               "test_accuracy": result["test_accuracy"], "train_history": result["history"],
               "relative_change": moved, "blocks": {label: [summary(a) | {"pairs": a["pairs"],
                                                                        "pair_frequency": a["pair_frequency"],
                                                                        "pair_correlation": a["pair_correlation"]}
                                                             for a in blocks_] for label, blocks_ in analysis.items()},
               "seconds": time.perf_counter() - start}
    common.write_json(out / "results.json", results)
    (out / "report.md").write_text(report(results, preset_name))
    log(f"wrote {out / 'report.md'}, results.json, token_weights.png, token_weights_init.png "
        f"({common.format_seconds(results['seconds'])})")
    return 0


def unit_frequency(picture: np.ndarray) -> float:
    """The power-weighted mean spatial frequency |k| (cycles per patch) of one unit's picture (gh, gw), its mean
    removed: sum_k |k| |F(k)|^2 / sum_k |F(k)|^2 (0 for a constant picture)."""
    power = np.abs(np.fft.fft2(picture - picture.mean())) ** 2  # (gh, gw)
    ky, kx = np.meshgrid(np.fft.fftfreq(picture.shape[0]), np.fft.fftfreq(picture.shape[1]), indexing="ij")
    total = power.sum()
    return float((np.hypot(ky, kx) * power).sum() / total) if total > 0 else 0.0


def pair_units(kernel: np.ndarray) -> list[list[int]]:
    """Greedy pairs of the columns (units) of ``kernel`` (S, D): repeatedly the two remaining units whose weights
    are the most negatively correlated. An odd unit out is a pair of one."""
    corr = np.corrcoef(kernel.T) if kernel.shape[1] > 1 else np.ones((1, 1))  # (D, D)
    corr = np.where(np.isfinite(corr), corr, 0.0)  # a constant unit correlates with nothing
    np.fill_diagonal(corr, np.inf)
    remaining = list(range(kernel.shape[1]))
    pairs = []
    while len(remaining) >= 2:
        sub = corr[np.ix_(remaining, remaining)]
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        pairs.append(sorted([remaining[i], remaining[j]]))
        remaining = [u for u in remaining if u not in pairs[-1]]
    pairs += [[u] for u in remaining]
    return pairs


def analyse(kernel: np.ndarray, grid: tuple[int, int]) -> dict[str, Any]:
    """The pairs of one block's units sorted by frequency, with each pair's frequency and correlation."""
    frequency = [unit_frequency(kernel[:, j].reshape(grid)) for j in range(kernel.shape[1])]
    corr = np.corrcoef(kernel.T) if kernel.shape[1] > 1 else np.ones((1, 1))
    pairs = sorted(pair_units(kernel), key=lambda p: np.mean([frequency[u] for u in p]))
    return {"pairs": pairs, "pair_frequency": [float(np.mean([frequency[u] for u in p])) for p in pairs],
            "pair_correlation": [float(corr[p[0], p[1]]) if len(p) == 2 else None for p in pairs],
            "unit_frequency": frequency}


def summary(analysis: dict[str, Any]) -> dict[str, float]:
    correlations = [c for c in analysis["pair_correlation"] if c is not None]
    return {"mean_pair_correlation": float(np.mean(correlations)) if correlations else float("nan"),
            "mean_frequency": float(np.mean(analysis["unit_frequency"]))}


def plot_units(kernels: list[np.ndarray], analyses: list[dict[str, Any]], grid: tuple[int, int], path: Path,
               title: str, pairs_per_row: int = 8) -> None:
    """One panel per block: its pairs, low to high frequency, row by row, the two units of a pair side by side."""
    plt = common.pyplot()
    rows_per_block = [int(np.ceil(len(a["pairs"]) / pairs_per_row)) for a in analyses]
    # each pair: two picture columns, then a narrow empty column that separates it from the next pair
    ratios = ([1, 1, 0.35] * pairs_per_row)[:-1]
    cell = 0.55  # inches per picture
    fig = plt.figure(figsize=(cell * sum(ratios), cell * sum(rows_per_block) + 0.45 * len(kernels)))
    subfigs = fig.subfigures(len(kernels), 1, height_ratios=[r * cell + 0.45 for r in rows_per_block],
                             squeeze=False)[:, 0]
    for block, (sub, kernel, analysis, rows) in enumerate(zip(subfigs, kernels, analyses, rows_per_block,
                                                                strict=True)):
        axes = sub.subplots(rows, len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios, "wspace": 0.08,
                                                                             "hspace": 0.12})
        for ax in axes.ravel():
            ax.axis("off")
        for index, pair in enumerate(analysis["pairs"]):
            r, c = divmod(index, pairs_per_row)
            for k, unit in enumerate(pair):
                picture = kernel[:, unit].reshape(grid)
                limit = float(np.abs(picture).max()) or 1.0
                image = axes[r, 3 * c + k].imshow(picture / limit, cmap="RdBu_r", vmin=-1, vmax=1,
                                                  interpolation="nearest")
        s = summary(analysis)
        sub.suptitle(f"block {block}: {kernel.shape[1]} units, mean pair correlation "
                     f"{s['mean_pair_correlation']:.2f}, mean frequency {s['mean_frequency']:.2f} cycles/patch",
                     fontsize=9)
    # one scale for every picture: each unit's weights over the patch grid divided by its own largest |weight|
    bar = fig.colorbar(image, cax=fig.add_axes((0.3, -0.03, 0.4, 0.015)), orientation="horizontal",
                       ticks=[-1, 0, 1])  # below the panels (the figure is saved with a tight bounding box)
    bar.set_label("weight / the unit's largest |weight| (each picture: one hidden unit's weights over the "
                  "patch grid)", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.03)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def report(results: dict[str, Any], preset_name: str) -> str:
    s = results["settings"]
    rows = []
    for block, (trained, initial) in enumerate(zip(results["blocks"]["trained"], results["blocks"]["initial"],
                                                   strict=True)):
        rows.append([block, f"{trained['mean_pair_correlation']:.3f}", f"{initial['mean_pair_correlation']:.3f}",
                     f"{trained['mean_frequency']:.3f}", f"{initial['mean_frequency']:.3f}",
                     f"{100 * results['relative_change'][block]:.0f}%"])
    table = common.markdown_table(["block", "mean pair correlation, trained", "at initialisation",
                                   "mean frequency (cycles/patch), trained", "at initialisation",
                                   "kernel change (of its initial norm)"], rows)
    quick = common.quick_note(s, "pictures")
    return f"""# Token-mixing weights as pictures (paper Fig. 5)

Preset `{preset_name}`, sized for {s['sized_for']}. This run:
{s['model']} (patch {s['patch_size']}, a {s['grid'][0]}x{s['grid'][1]}
patch grid) trained on {s['train_images']} images of {'x'.join(map(str, s['image_shape']))} for {s['epochs']}
epochs, batch {s['batch_size']}, lr {s['lr']:g}, crop padding {s['crop_padding_used']}, flip {s['flip']},
{common.recipe_words(s)}, seed {s['seed']}: test accuracy {common.percent(results['test_accuracy'])}%, run
time {common.format_seconds(results['seconds'])}.{quick}

Each small picture is one hidden unit of `MixerBlock_i/token_mixing/Dense_0/kernel` (S, D_S): its S weights, one per
patch, on the patch grid (red positive, blue negative, each unit scaled to its own largest |weight|). Units are
paired greedily, the most negatively correlated remaining two first (opposite phase, as the paper pairs them), and
the pairs sorted by spatial frequency (the power-weighted mean |k| of the 2-D FFT, mean removed), low to high.

## Trained

![trained](token_weights.png)

## Untrained (the initial weights, paired and sorted the same way)

![initial](token_weights_init.png)

## In numbers

{table}

A mean pair correlation near -1 means each pair is one picture and its negative; random initial weights give
weakly negative ones (the most negative of many random pairs). A lower mean frequency means smoother, more
global pictures. The paper finds, after ImageNet-scale pre-training, local and global detectors of many
frequencies, in opposite-phase pairs, lower blocks more local.
"""


if __name__ == "__main__":
    sys.exit(main())
