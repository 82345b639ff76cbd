"""Paper Fig. 1 / Table 2 in spirit: accuracy against compute, for three Mixer sizes and two CNN sizes.

Every model is trained with the same recipe and number of epochs (train.fit's fine-tuning recipe, crop and flip;
one learning rate per model family from a sweep with the family's smallest model, common.choose_lrs), then:

* training FLOPs = 3 x flops_per_image x images seen (forward + a backward of about twice its cost; the models'
  own counts of their matrix multiplies and convolutions, x2 for multiply-adds);
* training time: the wall-clock time of the training steps (no evaluation during training);
* inference throughput: images per second of evaluation-mode forward passes of one batch of 256, measured;
* test accuracy at the end.

    python experiments/compute.py                            # full: CIFAR-10, 10 epochs each
    python experiments/compute.py --preset digits --data-dir /tmp/digits
    python experiments/compute.py --quick --data-dir DIR

The full preset is sized for CIFAR-10 (50,000 training images of 32x32x3): it prints its expected run time on
this machine before it starts. Output in --out: report.md, results.json, compute.png.
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
from common import Planned, Preset, log

MODELS = ("micro/4", "tiny/4", "small/4", "cnn-micro", "cnn-tiny")
PRESETS = {
    "full": Preset(sized_for="CIFAR-10 (50,000 training images, 32x32x3)", models=MODELS, epochs=10,
                   batch_size=128, crop_padding=4, flip=True, sweep=(0.01, 0.03, 0.1, 0.3), sweep_epochs=5,
                   sweep_train=10_000, sweep_validation=5_000, extra={"throughput_batch": 256}),
    "digits": Preset(sized_for="scikit-learn's 8x8 digits (1,437 training images, 8x8x1)", models=MODELS,
                     epochs=20, batch_size=32, crop_padding=0, flip=False, sweep=(0.03, 0.1, 0.3), sweep_epochs=15,
                     sweep_train=None, sweep_validation=300, extra={"throughput_batch": 256}),
    "mnist": Preset(sized_for=common.MNIST_SIZED,
                    models=MODELS, epochs=10, batch_size=64, crop_padding=2, flip=False, sweep=(0.03, 0.1, 0.3),
                    sweep_epochs=8, sweep_train=None, sweep_validation=500, extra={"throughput_batch": 256}),
    "quick": Preset(sized_for="CI: a few hundred images, seconds", models=("micro/4", "cnn-micro"), epochs=1,
                    batch_size=32, crop_padding=4, flip=True, train_size=128, test_size=64,
                    extra={"throughput_batch": 64}),
}


def model_list(text: str) -> tuple[str, ...]:
    """--models' type: known model names, each once."""
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in tm.MODEL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model {unknown[0]!r}; known: {', '.join(tm.MODEL_NAMES)}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text}: a model named twice")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = common.build_parser("experiments/compute.py", __doc__.split("\n\n")[0], PRESETS, "compute")
    parser.add_argument("--models", type=model_list, default=None, metavar="A,B,...",
                        help=f"the models to compare (default: the preset's; full: {','.join(MODELS)})")
    args = parser.parse_args(argv)
    preset_name = "quick" if args.quick else args.preset
    preset = common.resolve(args, PRESETS)
    models = args.models or preset.models
    if {common.family(name) for name in models} != {"Mixer", "CNN"}:
        common.fail(f"--models {','.join(models)}: give at least one Mixer and one CNN")
    data = common.load_data(args.data_dir, preset.train_size, preset.test_size, args.seed)
    common.require_batches(data, preset)
    steps = preset.epochs * (len(data.train_labels) // preset.batch_size)
    batch = min(preset.extra["throughput_batch"], len(data.test_labels))
    plan = common.sweep_plan(models, data, preset, args) + [
        Planned(name, steps, preset.batch_size, len(data.test_labels) + 4 * batch) for name in models]
    common.announce(common.estimate(plan, data, args.seed), preset, preset_name, wait=not (args.yes or args.quick))
    start = time.perf_counter()
    lrs, lr_how = common.choose_lrs(models, data, preset, args)
    log(f"learning rates: {lrs}")

    rows: list[dict[str, Any]] = []
    for name in models:
        model = common.build_model(name, data, args.seed)
        log(f"{name}: {common.describe(model)}")
        result = common.train(model, data, preset, lrs[common.family(name)], seed=args.seed, curves=False,
                              label=f"[{name}]")
        images_seen = result["steps"] * preset.batch_size
        row = {"model": name, "family": common.family(name), "params": model.num_params(),
               "flops_per_image": model.flops_per_image(), "images_seen": images_seen,
               "train_flops": 3 * model.flops_per_image() * images_seen, "train_seconds": result["seconds"],
               "inference_images_per_second": common.inference_images_per_second(model, data.test_images, batch, 3),
               "test_accuracy": result["test_accuracy"], "lr": result["lr"], "epochs": result["epochs"],
               "history": result["history"]}
        rows.append(row)
        log(f"{name}: test accuracy {100 * row['test_accuracy']:.2f}%, trained in "
            f"{common.format_seconds(row['train_seconds'])}, {row['inference_images_per_second']:.0f} images/s")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "compute.png")
    results = {"experiment": "compute", "settings": common.settings(preset, preset_name, args, data) | {
               "models": list(models), "throughput_batch": batch}, "learning_rates": lrs,
               "learning_rate_choice": lr_how, "models": rows,
               "pareto": {cost: pareto(rows, cost) for cost in ("train_flops", "train_seconds",
                                                               "inference_images_per_second")},
               "seconds": time.perf_counter() - start}
    common.write_json(out / "results.json", results)
    (out / "report.md").write_text(report(results, preset_name))
    log(f"wrote {out / 'report.md'}, results.json, compute.png ({common.format_seconds(results['seconds'])})")
    return 0


PANELS = [("train_flops", "training FLOPs (3 x FLOPs/image x images seen)"),
          ("train_seconds", "training time (s)"),
          ("inference_images_per_second", "inference throughput (images/s, higher is better)")]


def pareto(rows: list[dict[str, Any]], cost: str) -> list[str]:
    """The models that no other beats on both accuracy and ``cost`` (lower is better, except throughput)."""
    sign = -1 if cost == "inference_images_per_second" else 1

    def beats(a: dict, b: dict) -> bool:
        return (sign * a[cost] <= sign * b[cost] and a["test_accuracy"] >= b["test_accuracy"]
                and (sign * a[cost] < sign * b[cost] or a["test_accuracy"] > b["test_accuracy"]))

    return [r["model"] for r in rows if not any(beats(o, r) for o in rows if o is not r)]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against each cost, one panel each (log x), each family's sizes joined by a line."""
    plt = common.pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.2), sharey=True)
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for fam in ("Mixer", "CNN"):
            points = sorted((r for r in rows if r["family"] == fam), key=lambda r: r[key])
            ax.plot([r[key] for r in points], [100 * r["test_accuracy"] for r in points], lw=1.5, label=fam,
                    **common.MODEL_STYLE[fam])
            for r in points:
                ax.annotate(r["model"], (r[key], 100 * r["test_accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        # a log axis spanning a decade or two labels every minor tick, and they overlap: label 2x and 5x only,
        # compactly; room above and beside the points for their labels
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:.0e}".replace("e+", "e") if x >= 1e4
                                                   else f"{x:g}"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.margins(x=0.15, y=0.12)
        ax.set(xlabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.suptitle("Accuracy against compute (paper Fig. 1 / Table 2 in spirit)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[str, Any], preset_name: str) -> str:
    s, rows = results["settings"], results["models"]
    table = common.markdown_table(
        ["model", "family", "parameters", "MFLOPs/image", "training FLOPs", "training time", "inference images/s",
         "test accuracy %"],
        [[r["model"], r["family"], f"{r['params']:,}", f"{r['flops_per_image'] / 1e6:.1f}",
          f"{r['train_flops']:.3g}", common.format_seconds(r["train_seconds"]),
          f"{r['inference_images_per_second']:.0f}", common.percent(r["test_accuracy"])] for r in rows])
    front = "\n".join(f"- against {label.split(' (')[0]}: {', '.join(results['pareto'][key])}"
                      for key, label in PANELS)
    quick = common.quick_note(s)
    return f"""# Accuracy against compute: Mixer sizes vs CNN sizes (paper Fig. 1 / Table 2 in spirit)

Preset `{preset_name}`, sized for {s['sized_for']}. This run:
{s['train_images']} training and {s['test_images']} test images of
{'x'.join(map(str, s['image_shape']))}, {s['num_classes']} classes; {s['epochs']} epochs for every model, batch
{s['batch_size']}, crop padding {s['crop_padding_used']}, flip {s['flip']}, {common.recipe_words(s)}, seed
{s['seed']}, backend {s['backend']}, run time {common.format_seconds(results['seconds'])}.{quick}

{table}

Training FLOPs = 3 x FLOPs/image x images seen; the training time is the training steps' wall-clock time alone;
inference throughput is measured on evaluation-mode forward passes of one batch of {s['throughput_batch']} test
images (median of 3, after one untimed pass), on this machine.

![accuracy against compute](compute.png)

## Pareto-optimal models (no other model is both cheaper and more accurate)

{front}

The paper (Fig. 1, Table 2) finds that at large scale the Mixer's accuracy-compute trade-off is competitive with
the CNNs' (BiT ResNets) and its throughput high; on small data from scratch the CNN's inductive bias usually wins,
as the other experiments show.

## Learning rates

{common.lr_lines(results['learning_rates'], results['learning_rate_choice'])}
"""


if __name__ == "__main__":
    sys.exit(main())
