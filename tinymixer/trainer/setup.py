"""From a run's options to what it trains with: the data (split and limited), the model (new, or started from a
checkpoint), the optimiser, and the schedule's length. A problem is an ``OptionError`` with the line to show; a
note goes to ``say``. What ``examples/cifar10.py`` (and a program like it) calls in order."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..data import DataError, Dataset, find_data, load_folder
from ..data.pipeline import Augmentation
from ..nn.architectures import auto_patch_size
from ..nn.cnn import CNN_SIZES, ResNet
from ..nn.mixer import SIZES, MlpMixer
from ..training import distributed, recipes
from ..training.optim import SGD, Adam, warmup_steps
from ..transfer.pretrained import FamilyError, PretrainedError, load_for_finetuning
from ..transfer.weights import WeightsError, resolve
from .options import ARCHITECTURES, RECIPES, OptionError, remembered
from .state import on_root as _on_root


def load_data(args: argparse.Namespace, say: Callable[[str], None] = print) -> Dataset:
    """The data set, with the validation split and limits applied. In a data-parallel run every rank loads it
    (from the same folder, or a copy at the same path on each machine); rank 0 first, alone, in case CIFAR-10 is
    to be downloaded or extracted."""
    comm = distributed.world()
    if not comm.is_root:
        comm.barrier()
    try:
        folder = find_data(args.data_dir, download=False if args.no_download else (True if args.download else None),
                           url=args.data_url, md5=args.data_md5, progress=not args.no_progress and comm.is_root)
    except DataError as exc:
        if getattr(args, "data_dir_from", None) is None:
            raise
        raise DataError(f"{exc} (--data-dir {args.data_dir} is the one remembered by {args.data_dir_from}; give "
                        f"--data-dir to use another folder)") from exc
    data = load_folder(folder)
    if comm.is_root:
        comm.barrier()
    if len(data.test_labels) == 0 or len(data.train_labels) == 0:
        raise DataError(f"{folder} holds {len(data.train_labels)} training and {len(data.test_labels)} test images: "
                        f"a run needs both (write the set again with some images in each)")
    h, w, c = data.image_shape
    say(f"data: {folder} ({len(data.train_labels)} training and {len(data.test_labels)} test images, {h}x{w}x{c}, "
        f"{data.num_classes} classes)")
    if args.validation:
        if args.validation >= len(data.train_labels):
            raise OptionError(f"--validation {args.validation} holds out every training image (there are "
                 f"{len(data.train_labels)}); hold out fewer")
        data = data.split_validation(args.validation, seed=args.seed)
    for flag, limit, available in (("--limit-train", args.limit_train, len(data.train_labels)),
                                   ("--limit-test", args.limit_test, len(data.test_labels))):
        if limit is not None and limit > available:  # not an error (a quick-run setting kept across data sets)
            say(f"{flag} {limit}: there are only {available} images; using all of them")
    # a seeded subset with every class in proportion (the first N of data sorted by class would be a few classes)
    return data.limited(args.limit_train, args.limit_test, seed=args.seed)


def size_name(model: Any) -> str | None:
    """The named size (``SIZES``, ``CNN_SIZES``) a network has the layers of, whatever its patch size, image size
    and classes; None for a size of its own."""
    if isinstance(model, ResNet):
        shape = (model.widths, model.depths, model.groups)
        return next((name for name, size in CNN_SIZES.items()
                     if (tuple(size.widths), tuple(size.depths), size.groups) == shape), None)
    shape = (model.num_blocks, model.hidden_dim, model.tokens_mlp_dim, model.channels_mlp_dim)
    return next((name for name, size in SIZES.items()
                 if (size.num_blocks, size.hidden_dim, size.tokens_mlp_dim, size.channels_mlp_dim) == shape), None)


def build_model(args: argparse.Namespace, data: Dataset, say: Callable[[str], None] = print) -> Any:
    """A new model of --config for the data (at --image-size when given), or one started from --init's weights."""
    h, w, c = data.image_shape
    if args.image_size:
        h = w = args.image_size
    if args.init:
        try:  # a file, or the name of pretrained weights: fetched once, by rank 0 alone
            path = _on_root(lambda: resolve(args.init, say=say))
        except WeightsError as exc:
            raise OptionError(f"--init {args.init}: {exc}") from None
        try:
            model, notes = load_for_finetuning(path, data.num_classes, (h, w), args.dtype, args.seed,
                                               keep_head=args.keep_head, architecture=ARCHITECTURES[args.model])
        except FamilyError as exc:
            other = next(name for name, arch in ARCHITECTURES.items() if arch == exc.held)
            raise OptionError(f"--init {args.init}: {exc}; to fine-tune it, add --model {other}") from None
        except PretrainedError as exc:
            raise OptionError(f"--init {args.init}: {exc}") from None
        for note in notes:
            say(f"note: --init {args.init}: {note}" + (" (--keep-head)" if "head kept" in note else
                                                      " (--keep-head keeps a matching one)" if "new zero" in note
                                                      else ""))
        if model.in_channels != c:
            raise OptionError(f"--init {args.init} takes images of {model.in_channels} channels, the data has {c}")
        if args.model == "mixer":
            model.dropout, model.stochastic_depth = args.dropout, args.stochastic_depth  # this run's
        args.config = size_name(model) or args.config  # what is said and remembered: the checkpoint's size
        return model
    if args.model == "cnn":
        return ResNet.from_name(args.config, num_classes=data.num_classes, image_size=(h, w), in_channels=c,
                                   seed=args.seed, dtype=args.dtype)
    patch = args.patch_size
    if patch == "auto":
        size_patch = SIZES[args.config].patch_size
        patch = auto_patch_size(size_patch, (h, w))
        if patch != size_patch:
            say(f"note: patch size {patch}: {args.config}'s {size_patch} would leave "
                  f"{(h // size_patch) * (w // size_patch) if h % size_patch == w % size_patch == 0 else 'no whole'}"
                  f" tokens on {h}x{w} images (--patch-size sets it)")
    try:
        return MlpMixer.from_name(args.config, num_classes=data.num_classes, image_size=(h, w), in_channels=c,
                                     seed=args.seed, dtype=args.dtype, patch_size=patch, dropout=args.dropout,
                                     stochastic_depth=args.stochastic_depth)
    except ValueError as exc:
        raise OptionError(f"--patch-size {patch}: {exc}") from None


def check_fits(model: Any, data: Dataset, what: str, resized: bool = False) -> None:
    """The data must be what the model takes (or, ``resized`` to the model's resolution on the fly, its channels
    and classes must be)."""
    h, w = model.image_size
    hd, wd, cd = data.image_shape
    if (hd, wd, cd) != (h, w, model.in_channels) and not (resized and cd == model.in_channels) \
            or data.num_classes != model.num_classes:
        raise OptionError(f"{what} takes {h}x{w}x{model.in_channels} images of {model.num_classes} classes, but the "
                          f"data has {hd}x{wd}x{cd} images of {data.num_classes} classes: is --data-dir the data it "
                          f"was trained on?")


def make_optimizer(args: argparse.Namespace, model: Any) -> SGD | Adam:
    """The optimiser of --optimizer (training.recipes.make_optimizer: weight decay on the kernels alone)."""
    return recipes.make_optimizer(vars(args), model.params)


def batch_layout(args: argparse.Namespace, comm: Any, train_size: int) -> tuple[slice, int]:
    """This process's rows of every global batch of --batch-size images, and the steps of an epoch; refused when
    a process would get no image, an accumulation part none, or the data no whole batch."""
    if comm.size > args.batch_size:
        raise OptionError(f"--batch-size {args.batch_size} is smaller than the {comm.size} processes; each needs at "
                          f"least one image of every batch")
    rows = distributed.shard_of(args.batch_size, comm)
    if args.accumulate > rows.stop - rows.start:
        raise OptionError(f"--accumulate {args.accumulate} parts of {rows.stop - rows.start} images (each process's "
                          f"share of a batch of {args.batch_size}): each part needs at least one image; lower "
                          f"--accumulate")
    steps_per_epoch = train_size // args.batch_size
    if steps_per_epoch == 0:
        raise OptionError(f"{train_size} training images is less than one batch of {args.batch_size}; lower "
                          f"--batch-size")
    return rows, steps_per_epoch


def plan_schedule(args: argparse.Namespace, given: set[str], steps_per_epoch: int, budget_epochs: int | None = None,
                  say: Callable[[str], None] = print) -> tuple[int, int]:
    """The run's total steps and warm-up steps. With ``budget_epochs`` (what --time-budget allows) the run is
    that long, and a recipe's warm-up given in epochs or steps keeps its share of the recipe's own length."""
    recipe, from_recipe = RECIPES[args.recipe], "warmup" not in given and "warmup" in RECIPES[args.recipe]
    if budget_epochs is not None:
        args.epochs = budget_epochs
        if from_recipe and recipe.get("epochs") and not args.warmup.endswith("%"):
            planned = recipe["epochs"] * steps_per_epoch  # the length the recipe's warm-up was sized for
            share = warmup_steps(args.warmup, planned, steps_per_epoch) / planned
            say(f"note: --recipe {args.recipe}'s warm-up of {args.warmup} is {100 * share:.3g}% of its "
                f"{recipe['epochs']} epochs; the time budget's {args.epochs} epoch(s) keep that share (--warmup sets "
                f"it)")
            args.warmup = f"{100 * share:.6g}%"
    total_steps = args.epochs * steps_per_epoch
    try:
        warmup = warmup_steps(args.warmup, total_steps, steps_per_epoch)
    except ValueError as exc:
        source = (f" (the warm-up of --recipe {args.recipe}; give --warmup to override it, e.g. --warmup 5%)"
                  if from_recipe else "")
        raise OptionError(f"--warmup: {exc}{source}") from None
    if warmup and warmup >= total_steps and total_steps > 1:
        source = f"--recipe {args.recipe}'s" if from_recipe else "the"
        raise OptionError(f"--warmup: {source} warm-up of {args.warmup} is the whole run ({total_steps} steps): the "
                          f"learning rate would only rise; give a shorter --warmup (e.g. 5%) or more --epochs")
    return total_steps, warmup


def augmentation(args: argparse.Namespace, size: tuple[int, int]) -> Augmentation:
    """What the options do to each training batch of images of ``size`` (--crop-padding auto: 1/8 of the side)."""
    crop = round(min(size) / 8) if args.crop_padding == "auto" else args.crop_padding
    return recipes.augmentation(vars(args), crop, args.flip)


def describe(args: argparse.Namespace, model: Any, data: Dataset, split: str, steps_per_epoch: int, warmup: int,
             crop: int, backend: str, shards: int, comm: Any, rows: slice) -> list[str]:
    """The lines a run starts with: the model, the data and the schedule in one; every option that applies in
    another (an option that does nothing in this run is left out)."""
    shape = (f"patch {model.patch_size} ({model.num_tokens} tokens)" if args.model == "mixer" else
             f"widths {'/'.join(map(str, model.widths))}, blocks {'/'.join(map(str, model.depths))}")
    first = (f"{'MLP-Mixer' if args.model == 'mixer' else 'CNN (ResNet)'} {args.config}: {model.num_params():,} "
             f"parameters, {shape}, {model.flops_per_image() / 1e6:.1f} MFLOPs per image (forward); "
             f"{len(data.train_labels)} training and {len(data.test_labels)} {split} images; {args.epochs} epochs of "
             f"{steps_per_epoch} steps, warm-up {warmup} steps, crop padding {crop}, flip "
             f"{'on' if args.flip else 'off'}; backend {backend}, {args.dtype}, batch in {shards} shard(s) (one per "
             f"thread; TINYMIXER_THREADS sets it)"
             + (f"; {comm.name}, {rows.stop - rows.start} images of each batch on each" if comm.size > 1 else ""))

    def applies(name: str) -> bool:
        if name in ("data_url", "data_md5"):  # only where CIFAR-10 may be downloaded
            return args.data_dir is None or args.download
        if name in ("patch_size", "dropout", "stochastic_depth"):  # a Mixer's options
            return args.model == "mixer"
        return name != "momentum" or args.optimizer == "sgd"

    settings = "settings: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in remembered(args).items()
                                        if v not in (None, False) and applies(k))
    lines = [first, settings]
    if args.stop_after_epoch and args.stop_after_epoch >= args.epochs:
        lines.append(f"--stop-after-epoch {args.stop_after_epoch}: the run has {args.epochs} "
                     f"epoch{'s' * (args.epochs != 1)}, so it runs to its end")
    return lines
