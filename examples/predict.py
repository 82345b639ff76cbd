"""Classify your own images with a trained network: an official pretrained Mixer, or any checkpoint of cifar10.py.

    python examples/predict.py photo.jpg                                         # Mixer-B/16, fetched once
    python examples/predict.py photo.jpg dir/ --checkpoint Mixer-L_16             # named weights (weights list)
    python examples/predict.py cat.png --checkpoint runs/cifar10/best.npz --top 3
    python examples/predict.py --image-folder photos/ --checkpoint Mixer-B_16.npz  # accuracy on labelled folders
    python examples/predict.py --help                                              # every option, with its default

The model is rebuilt from the checkpoint alone (tinymixer.training.checkpoint.load_model): an official .npz
(imagenet1k/ or imagenet21k/ Mixer-B_16.npz, ...) has its configuration read off the parameter shapes, a checkpoint
written by examples/cifar10.py carries it (a Mixer or the CNN baseline, --model cnn). Every image is read upright
(EXIF orientation), made RGB (transparency on white), resized to the model's resolution as the official evaluation
does (the whole picture, bilinear; --crop keeps the aspect ratio and takes the centre instead), scaled to [-1, 1],
and classified in batches (evaluation passes only). --top K larger than the model's classes shows them all.

Class names: --labels FILE (one per line) if given; else those a cifar10.py checkpoint stored; else, for a
1000-class head, the ImageNet-1k names shipped with tinymixer; else the class indices (e.g. a 21,843-class head).

Exit status: 0; 1 when some image files could not be read (the others are still classified); 2 for bad options, a
checkpoint that is not one of the project's networks, or no images at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import tinymixer as tm

tm.tune_host()  # first, before NumPy loads its BLAS: threads that sleep at once, freed memory kept

import numpy as np

from tinymixer.data import DataError
from tinymixer.data.images import (
    image_files,
    imagenet1k_class_names,
    list_image_folder,
    load_image,
    read_class_names,
)
from tinymixer.nn.network import Network
from tinymixer.training.checkpoint import META_KEY, CheckpointError, load_model
from tinymixer.training.evaluate import predict_logits
from tinymixer.transfer.weights import DEFAULT, WeightsError, resolve
from tinymixer.util import cli
from tinymixer.util.cli import Parser, add_backend_option, positive_int

PROG = "predict.py"


# ----------------------------------------------------------------------------------------------------------------
# Options


def build_parser() -> Parser:
    p = Parser(prog=PROG,
               description="Print the top classes (softmax probabilities) of each image, or the accuracy on an "
                           "ImageFolder tree, with a trained network: an official Mixer checkpoint or any checkpoint "
                           "of cifar10.py (Mixer or CNN).")
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE",
                   help="image files, or folders (their image files are taken, sorted)")
    p.add_argument("--checkpoint", default=DEFAULT, metavar="NAME|NPZ",
                   help="the name of pretrained weights, fetched once (python -m tinymixer.transfer.weights list), "
                        "an official Mixer .npz or a checkpoint written by cifar10.py (default: %(default)s, the "
                        "official ImageNet-1k Mixer-B/16)")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line in class-index order")
    p.add_argument("--top", type=positive_int, metavar="K", default=5, help="how many classes to print per image")
    p.add_argument("--crop", action="store_true",
                   help="resize the shorter side and take the centre crop (default: the whole image, as the official "
                        "evaluation)")
    p.add_argument("--image-folder", type=Path, metavar="ROOT",
                   help="report top-1/top-K accuracy on ROOT/<class>/<images>; a class folder is named after one of "
                        "the model's classes, or is its index")
    p.add_argument("--batch-size", type=positive_int, metavar="N", default=32, help="images per forward pass")
    add_backend_option(p)
    return p


def fail(message: str) -> None:
    """One line on stderr, exit code 2."""
    cli.fail(message, PROG)


# ----------------------------------------------------------------------------------------------------------------
# The model and its class names


def checkpoint_meta(path: Path) -> dict:
    """The metadata a cifar10.py checkpoint carries ({} for an official one); reads only that entry."""
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz[META_KEY])) if META_KEY in npz.files else {}


def class_names_for(model: Network, checkpoint: Path, labels: Path | None) -> tuple[list[str] | None, str]:
    """(the class names or None for indices, where they come from)."""
    k = model.num_classes
    stored = checkpoint_meta(checkpoint).get("class_names")
    if labels is not None:
        names, source = read_class_names(labels), str(labels)
    elif stored:
        names, source = [str(n) for n in stored], "the checkpoint's class names"
    elif k == 1000:
        names, source = imagenet1k_class_names(), "ImageNet-1k"
    else:
        return None, "class indices"
    if len(names) != k:
        raise DataError(f"{source} has {len(names)} class names but the model has {k} classes")
    return names, source


def label(index: int, names: list[str] | None) -> str:
    return f"class {index}" if names is None else names[index]


# ----------------------------------------------------------------------------------------------------------------
# Images in, probabilities out


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders replaced by their image files. A path that does not exist is an error."""
    found = []
    for path in paths:
        if path.is_dir():
            found += image_files(path)
        elif path.exists():
            found.append(path)
        else:
            fail(f"{path}: no such file or folder")
    return found


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_batches(model: Network, paths: list[Path], args: argparse.Namespace):
    """Yield (paths read, probabilities (n, K)) batch by batch; an unreadable file is reported on stderr, counted
    in ``args.unreadable`` and left out."""
    for start in range(0, len(paths), args.batch_size):
        batch, images = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(load_image(path, model.image_size, args.crop, channels=model.in_channels))
                batch.append(path)
            except DataError as error:
                print(f"{PROG}: error: {error}", file=sys.stderr)
                args.unreadable += 1
        if batch:
            yield batch, softmax(predict_logits(model, np.stack(images), args.batch_size))


def top_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities of each row, largest first."""
    k = min(k, probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def classify(model: Network, paths: list[Path], names: list[str] | None, args: argparse.Namespace) -> None:
    for batch, probs in predict_batches(model, paths, args):
        for path, p, best in zip(batch, probs, top_classes(probs, args.top), strict=True):
            print(path)
            for i in best:
                print(f"  {p[i]:7.2%}  {label(i, names)}")


def evaluate_folder(model: Network, root: Path, names: list[str] | None, args: argparse.Namespace) -> None:
    """Top-1 and top-K accuracy on ROOT/<class>/<images>, class folders matched to the model's classes."""
    paths, folder_labels, folders = list_image_folder(root)
    lookup = {key(n): i for i, n in enumerate(names or [])}
    classes, unmatched = [], []
    for folder in folders:
        if key(folder) in lookup:
            classes.append(lookup[key(folder)])
        elif folder.isdigit() and int(folder) < model.num_classes:
            classes.append(int(folder))
        else:
            unmatched.append(folder)
    if unmatched:
        fail(f"class folders of {root} that match no class of the model (by name, or as an index below "
             f"{model.num_classes}): {', '.join(unmatched[:5])}{', ...' if len(unmatched) > 5 else ''}")
    truth = dict(zip(paths, np.asarray(classes)[folder_labels], strict=True))
    top1 = topk = total = 0
    for batch, probs in predict_batches(model, paths, args):
        labels = np.array([truth[p] for p in batch])
        best = top_classes(probs, args.top)
        top1 += int((best[:, 0] == labels).sum())
        topk += int((best == labels[:, None]).any(axis=1).sum())
        total += len(batch)
    if total:
        print(f"{root}: {total} images in {len(folders)} classes: top-1 accuracy {top1 / total:.2%} "
              f"({top1}/{total}), top-{args.top} accuracy {topk / total:.2%} ({topk}/{total})")


def key(name: str) -> str:
    """Class names compared loosely: case, and '_' for ' ', do not matter."""
    return name.replace("_", " ").strip().casefold()


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.unreadable = 0
    if not args.images and args.image_folder is None:
        fail("give image files or folders, or --image-folder ROOT")
    paths = expand(args.images)
    if args.images and not paths:
        fail(f"no image files in {', '.join(map(str, args.images))}")
    try:
        tm.set_backend(args.backend)
    except (RuntimeError, ValueError) as error:  # no GPU for cupy; a $TINYMIXER_BACKEND no backend has
        fail(f"{cli.backend_label(args.backend)}: {error}")
    try:
        args.checkpoint = resolve(args.checkpoint)  # a file, or named weights fetched once into the cache
        model = load_model(args.checkpoint)
        names, source = class_names_for(model, args.checkpoint, args.labels)
    except (WeightsError, CheckpointError, DataError) as error:
        fail(str(error))
    h, w = model.image_size
    print(f"{args.checkpoint}: {model.describe()}, {h}x{w} images, {model.num_classes} classes ({source})")
    if args.top > model.num_classes:
        print(f"note: --top {args.top} is more than the model's {model.num_classes} classes: top-{model.num_classes}")
        args.top = model.num_classes
    if paths:
        classify(model, paths, names, args)
    if args.image_folder is not None:
        try:
            evaluate_folder(model, args.image_folder, names, args)
        except DataError as error:
            fail(str(error))
    return 1 if args.unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
