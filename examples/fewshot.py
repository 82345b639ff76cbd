"""Few-shot linear evaluation of a network's frozen features, as in the paper: 1, 5, 10, 25 images per class.

    python examples/fewshot.py --checkpoint Mixer-B_16.npz --data-dir DIR     # an official checkpoint
    python examples/fewshot.py --checkpoint runs/cifar10/best.npz --data-dir DIR --shots 1 5 --seeds 5
    python examples/fewshot.py --help                                         # every option, with its default

The model (an official Mixer .npz, or a checkpoint of examples/cifar10.py: a Mixer or the CNN) is frozen: its
pre-logits features (``features``: for a Mixer the last LayerNorm averaged over the tokens, for the CNN the last
GroupNorm and ReLU averaged over the positions) are computed once, in batches, for the training
images the draws use and for the test set. For every shot count and seed, `shots` training images per class are
drawn, a linear classifier is fitted to them in closed form (regularised least squares to {-1, +1} targets, with
the official whitening and bias: tinymixer/transfer/fewshot.py) and scored on the test set. The table gives the mean and
standard deviation over the seeds. The defaults are the official evaluator's: shots 1 5 10 25, 3 seeds, l2 1024.

The data is any folder in the CIFAR "python version" layout (--data-dir; `python -m tinymixer.data` makes one).
Images whose size is not the model's are resized to the model's resolution, a batch at a time, as the official
evaluation resizes (tinymixer.data.images.resize_image: tf.image.resize's bilinear interpolation, half-pixel centres,
no antialiasing); --image-size N resizes them to N x N instead and takes the model's resolution from the centre,
as the official few-shot pipeline does (resize(256)|central_crop(224): --image-size 256 for a 224-pixel model).
Pixels are scaled to [-1, 1] as the official input pipeline does.

Cost: the features are nearly the whole bill (the 12 probes of the defaults on 10,000 test images of 768-dim
features take 1.4 s with 10 classes, 6 s with 100, measured here). MlpMixer.features of a randomly initialised
Mixer-B/16 at 224 pixels, 64 images in one batch, float32, NumPy/OpenBLAS, on the development machine (2 CPU cores
shared with other developers, load average 4.4-5.1 during the four runs): 35-45 s per 64 images, i.e. 540-700 s
per 1000 images, with the process getting about 0.8 of a core (28-29 s of CPU time per 64 images); on two idle
cores that would be about 15 s per 64, some 230 s per 1000 (an extrapolation, not measured). CIFAR-10's whole test set
(10,000 images) plus the at most 750 training images of 3 seeds x 25 shots is therefore 40 minutes to 2 hours on
such a machine; --limit-test N evaluates on N of the test images (every class in proportion) for a quicker estimate.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import tinymixer as tm

tm.tune_host()  # first, before NumPy loads its BLAS: threads that sleep at once, freed memory kept

import numpy as np
from tqdm import tqdm

from tinymixer.data import DATA_DIR_ENV, DataError, class_balanced_subset, find_data, load_folder, normalize
from tinymixer.data.images import resize_image
from tinymixer.nn.network import Network
from tinymixer.training.checkpoint import CheckpointError, load_model
from tinymixer.transfer.fewshot import L2, NUM_SEEDS, SHOTS, few_shot_evaluation, few_shot_rows, mean_and_std
from tinymixer.transfer.weights import WeightsError, resolve
from tinymixer.util import cli
from tinymixer.util.cli import Parser, add_backend_option, number

# ----------------------------------------------------------------------------------------------------------------
# Options


def fail(message: str) -> None:
    """A problem found after parsing (a missing file, data that does not fit): one line on stderr, exit code 2."""
    cli.fail(message, "fewshot.py")


def build_parser() -> Parser:
    p = Parser(prog="fewshot.py", description=__doc__.split("\n\n")[0])
    pos = number(int, 1)
    p.add_argument("--checkpoint", required=True, metavar="NAME|NPZ",
                   help="the name of pretrained weights, fetched once (e.g. Mixer-B_16; python -m "
                        "tinymixer.transfer.weights list), an official Mixer .npz or a checkpoint of "
                        "examples/cifar10.py")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help=f"a CIFAR-layout folder or its parent (default: CIFAR-10 in ${DATA_DIR_ENV} or "
                        f"~/.cache/tinymixer; never downloaded unless --download)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if it is not there")
    p.add_argument("--shots", type=pos, nargs="+", metavar="N", default=list(SHOTS),
                   help="training images per class, one probe per value")
    p.add_argument("--seeds", type=pos, metavar="N", default=NUM_SEEDS,
                   help="draws of the training images per shot count (seeds 0..N-1)")
    p.add_argument("--l2", type=number(float, 0, low_open=True), nargs="+", metavar="L2", default=[L2],
                   help="ridge regularisation; several values give one column each")
    p.add_argument("--batch-size", type=pos, metavar="N", default=64, help="images per forward pass")
    p.add_argument("--image-size", type=pos, metavar="N",
                   help="resize images to N x N, then crop the model's resolution from the centre (default: resize "
                        "straight to the model's resolution)")
    p.add_argument("--limit-test", type=pos, metavar="N",
                   help="evaluate on N of the test images: a random subset (seed 0) with every class in proportion")
    add_backend_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Images -> features


def resize_and_crop(images: np.ndarray, resize_to: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """uint8 images (B, H, W, C) resized to ``resize_to`` as the official evaluation resizes (``resize_image``:
    bilinear, half-pixel centres, no antialiasing), then their central ``crop``.  Returns (B, crop_h, crop_w, C)
    uint8; the images themselves when nothing changes."""
    (rh, rw), (ch, cw) = resize_to, crop
    if images.shape[1:3] != (rh, rw):
        images = np.stack([resize_image(img, (rh, rw)) for img in images])  # (B, rh, rw, C)
    top, left = (rh - ch) // 2, (rw - cw) // 2
    return images[:, top:top + ch, left:left + cw]  # (B, ch, cw, C)


def compute_features(model: Network, images: np.ndarray, resize_to: tuple[int, int], batch_size: int,
                     desc: str, progress: bool) -> np.ndarray:
    """The model's pre-logits features (N, C) on the host, float32, for uint8 images (N, H, W, C): a batch at a
    time resized, scaled to [-1, 1], and passed through the frozen model."""
    out = np.zeros((len(images), model.feature_dim), dtype=np.float32)  # (N, C)
    with tqdm(total=len(images), desc=desc, unit="img", leave=False,
              disable=None if progress else True) as bar:
        for start in range(0, len(images), batch_size):
            batch = resize_and_crop(images[start:start + batch_size], resize_to, model.image_size)  # (b, h, w, C_in)
            out[start:start + len(batch)] = tm.to_host(model.features(normalize(batch, model.dtype)))  # (b, C)
            bar.update(len(batch))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The evaluation


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.shots = list(dict.fromkeys(args.shots))  # each shot count once, in the order given
    try:
        tm.set_backend(args.backend)
    except (RuntimeError, ValueError) as exc:
        fail(f"{cli.backend_label(args.backend)}: {exc}")

    # --- the frozen model and the data --------------------------------------------------------------------------
    try:
        args.checkpoint = resolve(args.checkpoint)  # a file, or named weights fetched once into the cache
        model = load_model(args.checkpoint)
    except (WeightsError, CheckpointError) as exc:
        fail(str(exc))
    h, w = model.image_size
    print(f"model: {args.checkpoint} ({model.describe()}, {h}x{w} images; features of {model.feature_dim} "
          f"dimensions)")
    try:
        folder = find_data(args.data_dir, download=args.download, progress=not args.no_progress)
        data = load_folder(folder)
    except DataError as exc:
        fail(str(exc))
    keep = class_balanced_subset(data.test_labels, args.limit_test)  # every class in proportion, not the first N
    test_images, test_labels = data.test_images[keep], data.test_labels[keep]
    hd, wd, cd = data.image_shape
    print(f"data: {folder} ({len(data.train_labels)} training and {len(test_labels)} test images, {hd}x{wd}x{cd}, "
          f"{data.num_classes} classes)")
    if cd != model.in_channels:
        fail(f"the images have {cd} channels, the model takes {model.in_channels}")
    if args.image_size is not None and (args.image_size < h or args.image_size < w):
        fail(f"--image-size {args.image_size} is smaller than the model's {h}x{w}: the crop must fit in the image")
    resize_to = (args.image_size, args.image_size) if args.image_size else (h, w)
    if (hd, wd) != resize_to or resize_to != (h, w):
        crop = f", central {h}x{w} crop" if resize_to != (h, w) else ""
        print(f"images: {hd}x{wd} resized bilinearly to {resize_to[0]}x{resize_to[1]}{crop}")
    if not len(test_labels):
        fail(f"{folder} has no test images to evaluate on")

    # --- the draws of every (shots, seed), and the features of the images they use ------------------------------
    seeds = range(args.seeds)
    try:
        rows = few_shot_rows(data.train_labels, args.shots, seeds, data.num_classes)  # (R,) indices
    except ValueError as exc:
        fail(f"--shots {max(args.shots)}: {exc}")
    start = time.perf_counter()
    progress = not args.no_progress
    train_features = np.zeros((len(data.train_labels), model.feature_dim), dtype=np.float32)  # (N, C)
    # Only the drawn rows are computed and ever read; the others stay zero (and np.zeros leaves untouched pages of
    # a large array unallocated, so 50,000 x 768 floats cost only the rows written).
    train_features[rows] = compute_features(model, data.train_images[rows], resize_to, args.batch_size,
                                            "training features", progress)
    test_features = compute_features(model, test_images, resize_to, args.batch_size, "test features", progress)
    feature_seconds = time.perf_counter() - start
    num_images = len(rows) + len(test_labels)

    # --- one probe per (l2, shots, seed), closed form ------------------------------------------------------------
    start = time.perf_counter()
    results = {l2: few_shot_evaluation(train_features, data.train_labels, test_features, test_labels, args.shots,
                                       args.seeds, l2, data.num_classes) for l2 in args.l2}
    probe_seconds = time.perf_counter() - start

    print(f"\nfew-shot accuracy on {len(test_labels)} test images, {data.num_classes} classes (chance "
          f"{100 / data.num_classes:.1f}%), mean ± std over {args.seeds} seed{'s' * (args.seeds > 1)}:")
    columns = [f"l2={l2:g}" for l2 in args.l2]
    print("shots  " + "  ".join(c.rjust(15) for c in columns))
    for shots in args.shots:
        cells = [mean_and_std(100 * results[l2][shots]) for l2 in args.l2]
        print(f"{shots:5d}  " + "  ".join(f"{m:6.2f} ± {s:5.2f}%".rjust(15) for m, s in cells))
    print(f"\ntime: features {feature_seconds:.1f} s ({len(rows)} training + {len(test_labels)} test images, "
          f"{num_images / feature_seconds:.1f} images/s), probes {probe_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
