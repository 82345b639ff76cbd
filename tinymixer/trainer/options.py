"""The options of a training run (``examples/cifar10.py``): the command line, recipes as named sets of defaults,
what a checkpoint remembers of them, and applying what it remembers as the defaults of a resumed (or evaluated)
run, with every change said.

A problem with the options found after parsing raises ``OptionError`` with the one line to show the user.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..chunks import num_threads
from ..data import CIFAR10_MD5, CIFAR10_URL, DATA_DIR_ENV, DataError, find_data
from ..nn.architectures import MIN_TOKENS, MODEL_NAMES
from ..nn.cnn import CNN_SIZES
from ..nn.mixer import SIZES
from ..training import distributed
from ..training.optim import SCHEDULES, warmup_steps
from ..training.recipes import DEFAULTS, RECIPES  # the training settings' defaults, and the named sets of them
from ..util.cli import Parser, add_backend_option, duration, number


class OptionError(ValueError):
    """A bad option, or combination of options, found after parsing: its message is the line to show."""


# The options a checkpoint remembers, restored by --resume (the rest belong to one invocation: --out, --resume,
# --backend, progress and logging). The model's shape is remembered as the model itself (meta["model"]).
REMEMBERED = ["model", "config", "patch_size", "dtype", "init", "keep_head", "image_size", "head_only", "accumulate",
              "recipe", "data_dir", "data_url", "data_md5", "validation", "limit_train", "limit_test", "epochs",
              "batch_size", "optimizer", "schedule", "end_lr", "lr", "warmup", "clip", "momentum", "weight_decay",
              "label_smoothing", "mixup", "randaugment", "cutmix", "random_erasing", "ema", "crop_padding", "flip",
              "seed", "dropout", "stochastic_depth"]
MODEL_OPTIONS = ["model", "config", "patch_size", "dtype", "init", "keep_head", "image_size"]
MIXER_ONLY = ("config", "patch_size", "dropout", "stochastic_depth")  # what a recipe may set that a CNN has not
# Run options a resumed run cannot take a new value of, and why
FIXED_ON_RESUME = {
    "validation": "the held-out split decides which images were trained on and what the history's accuracies "
                  "measure",
    "recipe": "a recipe is the defaults of single options, and a resumed run's options are those it remembers "
              "(give the single options to change, e.g. --lr)",
    "optimizer": "the optimiser's state (SGD's momentum, Adam's moments) is part of the run"}
# --model: each family's sizes, and its default (--config auto)
FAMILIES = {"mixer": "micro/4", "cnn": "cnn-micro"}
ARCHITECTURES = {"mixer": "mixer", "cnn": "resnet"}  # --model: the "architecture" of its checkpoints' config
def int_or_auto(text: str) -> int | str:
    return "auto" if text == "auto" else number(int, 0)(text)


def randaugment_spec(text: str) -> str:
    """--randaugment N,M: N operations per image (0..10) of magnitude M (0..30); kept as text (it is remembered)."""
    try:
        num_ops, magnitude = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (e.g. 2,15), got {text!r}") from None
    if num_ops != int(num_ops) or not 0 <= num_ops <= 10 or not 0 <= magnitude <= 30:
        raise argparse.ArgumentTypeError(f"N must be a whole number 0..10 and M a magnitude 0..30, got {text!r}")
    return text


def warmup_spec(text: str) -> str:
    try:
        warmup_steps(text, total_steps=10**9, steps_per_epoch=1)  # the syntax only; the length is checked later
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


DESCRIPTION = ("Train an MLP-Mixer (or the CNN baseline) on CIFAR-10 or any CIFAR-layout folder, with NumPy (or "
               "CuPy on a GPU), every gradient written by hand.")


class RunParser(Parser):
    """The run's parser: under mpiexec every rank reads the options and finds the same mistake; rank 0 alone says
    it (every rank exits with code 2)."""

    def error(self, message: str) -> None:
        if distributed.launched_rank() == 0:
            super().error(message)
        self.exit(2)


def build_parser(prog: str = "cifar10.py", description: str = DESCRIPTION) -> Parser:
    """The command line of ``examples/cifar10.py``: every option, its default and its help."""
    p = RunParser(prog=prog, description=description)
    pos, whole, chance = number(int, 1), number(int, 0), number(float, 0, 1)
    model = p.add_argument_group("model")
    model.add_argument("--model", default="mixer", choices=list(FAMILIES),
                       help="the network: the MLP-Mixer, or the CNN baseline (a pre-activation ResNet with GroupNorm, "
                            "tinymixer/nn/cnn.py) to compare it with")
    model.add_argument("--config", default="auto", choices=["auto", *MODEL_NAMES], metavar="SIZE",
                       help=f"size; auto: {FAMILIES['mixer']} or {FAMILIES['cnn']}. Mixer sizes: "
                            f"{', '.join(SIZES)}; CNN sizes: {', '.join(CNN_SIZES)}")
    model.add_argument("--patch-size", type=int_or_auto, metavar="P", default="auto",
                       help=f"patch size; auto: the size's, or smaller where it would leave fewer than {MIN_TOKENS} "
                            f"tokens (patch 2 on 8x8 images)")
    model.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="floating-point type")

    tune = p.add_argument_group("fine-tuning from a checkpoint")
    tune.add_argument("--init", metavar="NAME|CHECKPOINT",
                      help="start from these weights: the name of pretrained weights (e.g. Mixer-B_16, fetched "
                           "once: python -m tinymixer.transfer.weights list), an official Mixer .npz, or a "
                           "checkpoint of this script, of the --model family: all but the head, a new zero head for "
                           "the data's classes; the size comes from the checkpoint")
    tune.add_argument("--keep-head", action="store_true",
                      help="with --init: keep the checkpoint's head instead (its classes must be the data's)")
    tune.add_argument("--image-size", type=pos, metavar="N",
                      help="resize the images to NxN on the fly (e.g. 224 for an official checkpoint); a grid of "
                           "patches a whole multiple of the checkpoint's gets the paper's block-diagonal token mixing")
    tune.add_argument("--head-only", action="store_true", help="train the head alone, the rest frozen")
    tune.add_argument("--accumulate", type=pos, default=1, metavar="K",
                      help="split every batch into K parts, one after the other, and add up their gradients: the "
                           "update of the whole batch with the memory of one part")

    data = p.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, metavar="DIR",
                      help=f"a CIFAR-layout folder or its parent (default: CIFAR-10 in ${DATA_DIR_ENV} or "
                           f"~/.cache/tinymixer, downloaded once)")
    data.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if it is not there")
    data.add_argument("--no-download", action="store_true", help="never touch the network")
    data.add_argument("--data-url", default=CIFAR10_URL, help="where to download the archive from (e.g. a mirror)")
    data.add_argument("--data-md5", default=CIFAR10_MD5, help="the MD5 the downloaded archive must have")
    data.add_argument("--validation", type=whole, metavar="N", default=0,
                      help="hold out N training images and evaluate on them instead of the test set (0: off)")
    data.add_argument("--limit-train", type=pos, metavar="N",
                      help="train on N of the training images (quick runs): a random subset (--seed) with every "
                           "class in proportion")
    data.add_argument("--limit-test", type=pos, metavar="N",
                      help="evaluate on N of the test (or validation) images: a random subset (--seed) with every "
                           "class in proportion")

    train = p.add_argument_group("training (the paper's fine-tuning recipe)")
    described = "; ".join(f"{name}: " + (", ".join(f"{k.replace('_', '-')} {v}" for k, v in values.items())
                                          or "the defaults below") for name, values in RECIPES.items())
    described = described.replace("%", "%%")  # argparse formats help texts with %
    train.add_argument("--recipe", choices=list(RECIPES), default="finetune",
                       help=f"a named set of defaults, each option of which can still be given on its own "
                            f"({described})")
    train.add_argument("--epochs", type=pos, default=15, metavar="N", help="epochs to train")
    train.add_argument("--time-budget", type=duration, metavar="TIME",
                       help="instead of --epochs: as many epochs as fit in TIME (e.g. 10m, 1.5h), from a measured step "
                            "time, with the schedule fitted to them")
    train.add_argument("--batch-size", type=pos, metavar="N", default=128, help="images per step")
    train.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=DEFAULTS["optimizer"],
                       help="sgd: momentum (--momentum); adam, adamw: Adam (beta 0.9, 0.999); --weight-decay is "
                            "decoupled for sgd and adamw, coupled L2 for adam; biases and LayerNorm never decay")
    train.add_argument("--schedule", choices=sorted(SCHEDULES), default=DEFAULTS["schedule"],
                       help="after the linear warm-up: cosine decay, or linear decay (the paper's pre-training)")
    train.add_argument("--end-lr", type=number(float, 0), default=DEFAULTS["end_lr"],
                       help="the learning rate at the end of the run")
    train.add_argument("--lr", type=number(float, 0, low_open=True), default=DEFAULTS["lr"],
                       help="peak learning rate")
    train.add_argument("--warmup", type=warmup_spec, metavar="SPEC", default=DEFAULTS["warmup"],
                       help="linear warm-up: a percentage of the run (5%%), epochs (2ep) or steps (200)")
    train.add_argument("--clip", type=number(float, 0), metavar="NORM", default=DEFAULTS["clip"],
                       help="clip gradients at this global norm (0: off)")
    train.add_argument("--momentum", type=number(float, 0, 1), default=DEFAULTS["momentum"], help="SGD momentum")
    train.add_argument("--weight-decay", type=number(float, 0), default=DEFAULTS["weight_decay"],
                       help="decoupled weight decay")
    train.add_argument("--label-smoothing", type=chance, default=DEFAULTS["label_smoothing"], help="label smoothing")
    train.add_argument("--mixup", type=number(float, 0), metavar="ALPHA", default=DEFAULTS["mixup"],
                       help="mixup alpha (0: off)")
    train.add_argument("--randaugment", type=randaugment_spec, metavar="N,M",
                       help="RandAugment: N operations of magnitude M on each image, after crop and flip (the "
                            "official big_vision operations; the paper pre-trains with 2,15); default off")
    train.add_argument("--cutmix", type=number(float, 0), metavar="ALPHA", default=DEFAULTS["cutmix"],
                       help="CutMix alpha (0: off; not with --mixup)")
    train.add_argument("--random-erasing", type=chance, metavar="P", default=DEFAULTS["random_erasing"],
                       help="random erasing: the chance of each image (0: off; its paper uses 0.5)")
    train.add_argument("--crop-padding", type=int_or_auto, metavar="PIXELS", default="auto",
                       help="random-crop padding in pixels; auto: 1/8 of the image side (4 on 32x32); 0: no crop")
    train.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                       help="random horizontal flips (--no-flip e.g. for digits)")
    train.add_argument("--dropout", type=number(float, 0, 1, high_open=True), default=DEFAULTS["dropout"],
                       help="dropout rate after the GELU of every MLP (0: off)")
    train.add_argument("--stochastic-depth", type=number(float, 0, 1, high_open=True),
                       default=DEFAULTS["stochastic_depth"],
                       help="stochastic-depth rate of the last block, rising linearly from 0 at the first (0: off)")
    train.add_argument("--ema", type=number(float, 0, 1, high_open=True), default=0.0, metavar="DECAY",
                       help="also keep an exponential moving average of the weights (e.g. 0.999), evaluated beside "
                            "them; best.npz is the better of the two (0: off)")
    train.add_argument("--seed", type=number(int, 0), default=0,
                       help="seed of the weights, the data order and augmentation (0 or more)")

    run = p.add_argument_group("the run")
    run.add_argument("--out", type=Path, metavar="DIR", default=Path("runs/cifar10"), help="run folder")
    run.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                     help="continue the run in --out (or from CHECKPOINT) with its remembered options")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run (replacing it)")
    run.add_argument("--stop-after-epoch", type=pos, metavar="N",
                     help="stop (with a checkpoint) after epoch N, keeping the schedule of --epochs")
    run.add_argument("--evaluate", type=Path, metavar="CHECKPOINT",
                     help="only evaluate CHECKPOINT (on the test set, or --validation N's split); output goes beside "
                          "it, or to --out when given")
    add_backend_option(run)
    run.add_argument("--log-every", type=pos, metavar="N", default=10,
                     help="steps between progress-bar updates (each reads the loss back from the device)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: list[str], defaults: dict[str, Any] | None = None, prog: str = "cifar10.py",
               description: str = DESCRIPTION) -> tuple[argparse.Namespace, set[str]]:
    """The options, and which of them were given on the command line (not defaults). A --recipe's values replace
    the defaults, ``defaults`` (a checkpoint's remembered options, ``saved_defaults``) replace those, and options
    given on the command line win over all."""
    parser = build_parser(prog, description)
    parser.set_defaults(**(defaults or {}))
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    if args.model == "cnn":  # a recipe's Mixer settings (size, patches, dropout, stochastic depth) are not the CNN's
        recipe = {name: value for name, value in recipe.items() if name not in MIXER_ONLY}
    parser.set_defaults(**recipe)
    parser.set_defaults(**(defaults or {}))  # what the run used wins over its recipe's defaults
    args = parser.parse_args(argv)  # string defaults go through their option's type, as typed values would
    if args.download and args.no_download:
        parser.error("--download and --no-download contradict each other")
    if args.mixup and args.cutmix:
        parser.error("--mixup and --cutmix are two ways to mix a batch: choose one")
    try:
        num_threads()  # $TINYMIXER_THREADS, checked before anything runs
    except ValueError as exc:
        parser.error(str(exc))
    unset = object()
    parser.set_defaults(**{name: unset for name in vars(args)})
    given = {name for name, value in vars(parser.parse_args(argv)).items() if value is not unset}
    if args.time_budget and "epochs" in given:
        parser.error("--time-budget sets the number of epochs from a measured step: give one of the two")
    if "momentum" in given and args.optimizer != "sgd":
        parser.error(f"--momentum is SGD's; --optimizer {args.optimizer} has none (leave it out)")
    if args.end_lr > args.lr:
        parser.error(f"--end-lr {args.end_lr} is above the peak learning rate {args.lr}: the schedule decays to it")
    return args, given


def saved_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's remembered options as parser defaults (older checkpoints kept every value as text, and
    --no-flip as no_flip)."""
    options = dict(options)
    if "no_flip" in options:  # before --flip/--no-flip
        options["flip"] = options.pop("no_flip") in (False, "False")
    text = {"None": None, "True": True, "False": False}
    return {name: text.get(value, value) if isinstance(value, str) else value for name, value in options.items()
            if name in REMEMBERED}


def remembered(args: argparse.Namespace) -> dict[str, Any]:
    """The options a checkpoint keeps, paths absolute (so that --evaluate and --resume work from any folder)."""
    return {name: (str(v.expanduser().absolute()) if isinstance(v, Path) else v) for name, v in vars(args).items()
            if name in REMEMBERED}


def holds_data(folder: Path) -> bool:
    """Whether --data-dir ``folder`` would find a data set there (without downloading anything)."""
    try:
        find_data(folder, download=False)
    except DataError:
        return False
    return True


def with_remembered_options(meta: dict, argv: list[str], given: set[str], verb: str, path: Path
                            ) -> tuple[argparse.Namespace, list[str]]:
    """The options of the run a checkpoint (at ``path``) holds, overridden by those given now (each change noted).
    A remembered relative --data-dir (checkpoints before paths were stored absolute) is looked for from here, then
    from the checkpoint's folder and the folders above it (where the run was started); ``args.data_dir_from``
    names the checkpoint, for any error about that folder. Returns the options and the notes to show."""
    saved = saved_defaults(meta.get("options") or meta.get("args") or {})
    before, _ = parse_args([], saved)
    args, _ = parse_args(argv, saved)
    notes = []
    if verb == "evaluated":  # an evaluation uses the test set, all of it, unless told otherwise: not the run's split
        for name, default in (("validation", 0), ("limit_test", None)):
            if name not in given:
                setattr(args, name, default)
            elif getattr(args, name) == default:  # asked for what an evaluation does anyway: nothing to note
                setattr(before, name, default)
    for name in sorted(given & set(REMEMBERED)):
        old, new = getattr(before, name), getattr(args, name)
        if old != new:
            flag = "--" + name.replace("_", "-")
            if name in MODEL_OPTIONS and verb == "resumed":
                raise OptionError(f"the run being resumed was trained with {flag} {old}; {flag} {new} cannot "
                                  f"change it (leave model options out on --resume: they are remembered), or start "
                                  f"a new run with another --out")
            if name in FIXED_ON_RESUME and verb == "resumed":
                raise OptionError(f"the run being resumed was trained with {flag} {old}; {flag} {new} cannot "
                                  f"change on --resume: {FIXED_ON_RESUME[name]}. Start a new run with another --out")
            notes.append(f"note: {flag} is {new} now, {old} in the run being {verb}")
    args.data_dir_from = None
    if "data_dir" not in given and args.data_dir is not None:
        args.data_dir_from = path
        if not args.data_dir.expanduser().is_absolute():
            folder = Path(path).resolve().parent
            places = [Path.cwd(), folder, *folder.parents]
            found = next((place / args.data_dir for place in places if holds_data(place / args.data_dir)), None)
            if found is not None and found != Path.cwd() / args.data_dir:
                notes.append(f"note: the --data-dir {args.data_dir} remembered by {path} is {found}")
            args.data_dir = found or args.data_dir
    return args, notes


def check_model_options(args: argparse.Namespace) -> None:
    """--config auto becomes the family's default size; a size of the other family, or an option the family does
    not have, is refused in one line."""
    sizes = CNN_SIZES if args.model == "cnn" else SIZES
    if args.config == "auto":
        args.config = FAMILIES[args.model]
    if args.config not in sizes:
        raise OptionError(f"--config {args.config} is not a {args.model} size; --model {args.model} takes "
                          f"{', '.join(sizes)}")
    if args.model == "cnn":
        unused = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("patch_size", "dropout",
                  "stochastic_depth") if getattr(args, name) not in ("auto", 0, 0.0, None)]
        if unused:
            raise OptionError(f"{', '.join(unused)}: the CNN has no patches, dropout or stochastic depth; leave "
                              f"these options out with --model cnn")
    if args.keep_head and not args.init:
        raise OptionError("--keep-head keeps the head of --init's checkpoint; give --init CHECKPOINT, or leave it out")
