"""Paper section 3.3: how the Mixer and a CNN scale with the size of the training set.

Both models are trained on 10%, 30% and 100% of the training set: fixed, class-stratified random subsets, nested
(the 10% are part of the 30%). As the paper pre-trained on 3/10/30/100% of JFT-300M for 233/70/23/7 epochs, every
subset gets the SAME number of optimisation steps: epochs scale as 1/fraction (the preset's ``epochs`` are the
epochs at 100%). The rest is the recipe of the other experiments (train.fit's fine-tuning recipe, crop and flip),
one learning rate per model family chosen on the whole training set (common.choose_lrs) and kept for every subset.
With --seeds N every run is repeated with N seeds (weights and data order; the subsets stay those of --seed) and
the report gives mean +- standard deviation.

The paper's finding: with less data the Mixer overfits more than the ResNet and falls behind it; as the data grows
the Mixer gains faster, and the gap shrinks (at JFT-300M's full size Mixer-H/14 passes the BiT ResNet).

    python experiments/data_size.py                          # full: CIFAR-10 (micro/4 vs cnn-micro)
    python experiments/data_size.py --preset digits --data-dir /tmp/digits
    python experiments/data_size.py --quick --data-dir DIR

The full preset is sized for CIFAR-10 (50,000 training images of 32x32x3; 15 epochs at 100%, 50 at 30%, 150 at
10%): it prints its expected run time on this machine before it starts. Output in --out: report.md, results.json,
data_size.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import tinymixer as tm

tm.tune_host()  # first, before NumPy loads its BLAS: threads that sleep at once, freed memory kept

import common
import numpy as np
from common import Planned, Preset, log

from tinymixer.util.cli import number

FRACTIONS = (0.1, 0.3, 1.0)
PRESETS = {
    "full": Preset(sized_for="CIFAR-10 (50,000 training images, 32x32x3)", models=("micro/4", "cnn-micro"),
                   epochs=15, batch_size=128, crop_padding=4, flip=True, sweep=(0.01, 0.03, 0.1, 0.3),
                   sweep_epochs=5, sweep_train=10_000, sweep_validation=5_000, extra={"fractions": FRACTIONS}),
    "digits": Preset(sized_for="scikit-learn's 8x8 digits (1,437 training images, 8x8x1)",
                     models=("micro/4", "cnn-micro"), epochs=20, batch_size=32, crop_padding=0, flip=False,
                     sweep=(0.03, 0.1, 0.3), sweep_epochs=15, sweep_train=None, sweep_validation=300,
                     extra={"fractions": (0.1, 0.3, 1.0)}),
    "mnist": Preset(sized_for=common.MNIST_SIZED,
                    models=("micro/4", "cnn-micro"), epochs=15, batch_size=64, crop_padding=2, flip=False,
                    sweep=(0.03, 0.1, 0.3), sweep_epochs=8, sweep_train=None, sweep_validation=500,
                    extra={"fractions": FRACTIONS}),
    "quick": Preset(sized_for="CI: a few hundred images, seconds", models=("micro/4", "cnn-micro"), epochs=2,
                    batch_size=16, crop_padding=4, flip=True, train_size=320, test_size=64,
                    extra={"fractions": FRACTIONS}),
}


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser("experiments/data_size.py", __doc__.split("\n\n")[0], PRESETS, "data_size")
    parser.add_argument("--fractions", type=fractions_list, default=None, metavar="F,F,...",
                        help=f"shares of the training set (default: the preset's, {','.join(map(str, FRACTIONS))})")
    common.add_seeds_option(parser, "the subsets")
    args = parser.parse_args(argv)
    seeds = [args.seed + i for i in range(args.seeds)]
    preset_name = "quick" if args.quick else args.preset
    preset = common.resolve(args, PRESETS)
    fractions = args.fractions or preset.extra["fractions"]
    data = common.load_data(args.data_dir, preset.train_size, preset.test_size, args.seed)
    common.require_batches(data, preset)
    total = len(data.train_labels)
    steps = preset.epochs * (total // preset.batch_size)  # every subset gets this many steps
    subsets = []
    for fraction in sorted(fractions):
        size = max(1, round(fraction * total))
        per_epoch = size // preset.batch_size
        if per_epoch == 0:
            common.fail(f"{fraction:g} of {total} training images is {size} images, less than one batch of "
                        f"{preset.batch_size}: lower --batch-size or drop that fraction")
        subsets.append({"fraction": fraction, "images": size, "epochs": max(1, round(steps / per_epoch)),
                        "steps_per_epoch": per_epoch})
    for s in subsets:
        s["steps"] = s["epochs"] * s["steps_per_epoch"]
        log(f"{100 * s['fraction']:g}% of the training set: {s['images']} images, {s['epochs']} epochs, "
            f"{s['steps']} steps")

    plan = common.sweep_plan(preset.models, data, preset, args) + [
        Planned(name, s["steps"], preset.batch_size, len(data.test_labels)) for s in subsets
        for name in preset.models for _ in seeds]
    common.announce(common.estimate(plan, data, args.seed), preset, preset_name, wait=not (args.yes or args.quick))
    start = time.perf_counter()
    lrs, lr_how = common.choose_lrs(preset.models, data, preset, args)
    log(f"learning rates: {lrs}")

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in preset.models}
    for s in subsets:
        part = common.subset(data, common.stratified_subset(data.train_labels, s["images"], args.seed))
        for name in preset.models:
            def train_one(seed: int, name: str = name, part: Any = part, s: dict = s) -> dict[str, Any]:
                model = common.build_model(name, part, seed)
                result = common.train(model, part, preset, lrs[common.family(name)], seed=seed, epochs=s["epochs"],
                                      curves=False, label=f"[{name}, {100 * s['fraction']:g}%]")
                result["train_accuracy"] = result["history"][-1]["train_accuracy"]
                log(f"{name} on {s['images']} images" + (f", seed {seed}" if len(seeds) > 1 else "")
                    + f": test accuracy {100 * result['test_accuracy']:.2f}%")
                return result

            runs[name].append(s | common.repeated(train_one, seeds))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(runs, out / "data_size.png")
    results = {"experiment": "data_size", "settings": common.settings(preset, preset_name, args, data),
               "subsets": subsets, "learning_rates": lrs, "learning_rate_choice": lr_how,
               "seeds": seeds,
               "test_accuracy": {name: {str(r["fraction"]): mean(r, "test_accuracy") for r in rs}
                                 for name, rs in runs.items()},
               "runs": runs, "seconds": time.perf_counter() - start}
    results["gap"] = gap_summary(results)
    common.write_json(out / "results.json", results)
    (out / "report.md").write_text(report(results, preset_name))
    log(f"wrote {out / 'report.md'}, results.json, data_size.png ({common.format_seconds(results['seconds'])})")
    return 0


def mean(run: dict[str, Any], key: str) -> float:
    """``key`` averaged over the seeds of one run (common.repeated)."""
    return common.mean_std([r[key] for r in common.all_seeds(run)])[0]


def values(run: dict[str, Any], key: str) -> list[float]:
    return [r[key] for r in common.all_seeds(run)]


def fractions_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated fractions in (0, 1]."""
    parse = number(float, 0, 1, low_open=True)
    try:
        values = tuple(parse(part) for part in text.split(","))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: each fraction {exc}") from None
    if len(set(values)) < len(values) or len(values) < 2:  # the gap's trend needs two sizes at least
        raise argparse.ArgumentTypeError(f"{text!r}: give two different fractions or more, each once")
    return values


def gap_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The CNN's lead over the Mixer (accuracy points, CNN minus Mixer) at each subset, and whether it shrinks
    from the smallest subset to the whole set."""
    accuracy = results["test_accuracy"]
    mixer = next(n for n in accuracy if common.family(n) == "Mixer")
    cnn = next(n for n in accuracy if common.family(n) == "CNN")
    gaps = {f: 100 * (accuracy[cnn][f] - accuracy[mixer][f]) for f in accuracy[mixer]}
    first, last = gaps[min(gaps, key=float)], gaps[max(gaps, key=float)]
    return {"mixer": mixer, "cnn": cnn, "cnn_minus_mixer_points": gaps, "smallest": first, "largest": last,
            "shrinks": abs(last) < abs(first) or (first > 0 >= last)}


def gap_verdict(gap: dict[str, Any], largest: float) -> str:
    """The report's headline: how the CNN's lead changes from the smallest subset to the largest (``largest``: its
    share of the training set, named "the whole set" only when it is all of it)."""
    first, last = gap["smallest"], gap["largest"]
    whole = "the whole set" if largest == 1 else f"the largest subset ({100 * largest:g}%)"
    if first > 0 >= last:
        return f"the CNN leads by {first:.2f} points on the smallest subset, the Mixer leads on {whole}"
    if gap["shrinks"]:
        return (f"the gap shrinks: the CNN minus the Mixer is {first:+.2f} points on the smallest subset and "
                f"{last:+.2f} on {whole}")
    return (f"the gap does not shrink: the CNN minus the Mixer is {first:+.2f} points on the smallest subset and "
            f"{last:+.2f} on {whole}")


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Test accuracy (solid) and final training accuracy (dashed) against the number of training images, log x;
    with several seeds, their means and the test accuracy's standard deviation as error bars."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rs in runs.items():
        style = common.MODEL_STYLE[common.family(name)]
        sizes = [r["images"] for r in rs]
        test = 100 * np.array([common.mean_std(values(r, "test_accuracy")) for r in rs])  # (sizes, [mean, std])
        seeds = len(common.all_seeds(rs[0]))
        ax.errorbar(sizes, test[:, 0], yerr=test[:, 1] if seeds > 1 else None, lw=2, capsize=3,
                    label=f"{name} ({common.family(name)}), test" + (f", {seeds} seeds" if seeds > 1 else ""),
                    **style)
        ax.plot(sizes, [100 * mean(r, "train_accuracy") for r in rs], ls="--", lw=1, alpha=0.6, color=style["color"],
                marker=style["marker"], markerfacecolor="none", label=f"{name}, train (last epoch)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set(xlabel="training images (log scale; the same number of steps for every size)", ylabel="accuracy (%)",
           title="Accuracy against training-set size (paper section 3.3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[str, Any], preset_name: str) -> str:
    s, gap, runs = results["settings"], results["gap"], results["runs"]
    mixer, cnn = gap["mixer"], gap["cnn"]
    rows = []

    def accuracy(run: dict[str, Any]) -> str:  # "test (train)"
        return f"{common.percent_spread(values(run, 'test_accuracy'))} ({common.percent(mean(run, 'train_accuracy'))})"

    for m, c in zip(runs[mixer], runs[cnn], strict=True):
        gaps = [b - a for a, b in zip(values(m, "test_accuracy"), values(c, "test_accuracy"), strict=True)]
        rows.append([f"{100 * m['fraction']:g}%", m["images"], m["epochs"], m["steps"], accuracy(m), accuracy(c),
                     common.percent_spread(gaps, signed=True)])
    table = common.markdown_table(["share", "images", "epochs", "steps", f"{mixer} test (train) %",
                                   f"{cnn} test (train) %", "CNN - Mixer (points)"], rows)
    verdict = gap_verdict(gap, largest=runs[mixer][-1]["fraction"])
    quick = common.quick_note(s)
    n = len(results.get("seeds", [s["seed"]]))
    if n > 1:
        table += (f"\n\nMean ± standard deviation over {n} seeds ({', '.join(map(str, results['seeds']))}: the "
                  f"initial weights and the data order; the subsets are the same); the gap is paired by seed.")
    seeds_text = f"seed {s['seed']}" if n == 1 else f"seeds {', '.join(map(str, results['seeds']))}"
    verdict = verdict[0].upper() + verdict[1:]
    return f"""# Accuracy against training-set size: Mixer vs CNN (paper section 3.3)

Preset `{preset_name}`, sized for {s['sized_for']}. This run:
up to {s['train_images']} training and {s['test_images']} test images
of {'x'.join(map(str, s['image_shape']))}, {s['num_classes']} classes; batch {s['batch_size']}, crop padding
{s['crop_padding_used']}, flip {s['flip']}, {common.recipe_words(s)}, {seeds_text}, run time
{common.format_seconds(results['seconds'])}.
The subsets are fixed, class-stratified and nested; every one gets the same number of optimisation steps (as the
paper's 233/70/23/7 epochs on 3/10/30/100% of JFT-300M): epochs scale as 1/share.

## Result

**{verdict}.**{quick}

{table}

![accuracy against training-set size](data_size.png)

The paper: on small subsets the Mixer overfits more than the ResNet (BiT) and trails it; as the data grows it gains
faster, and at the largest scale it overtakes. The training accuracy in brackets shows the overfitting here.

## Learning rates (chosen on the whole training set, used for every subset)

{common.lr_lines(results['learning_rates'], results['learning_rate_choice'])}
"""


if __name__ == "__main__":
    sys.exit(main())
