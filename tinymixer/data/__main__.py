"""``python -m tinymixer.data``: NumPy arrays to a CIFAR-layout folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .cifar import is_cifar_folder, save_folder
from .dataset import DataError, Dataset, dataset_from_arrays, split_arrays


def main(argv: list[str] | None = None) -> int:
    """Convert NumPy arrays saved with ``np.savez`` into a CIFAR-layout folder."""
    from ..util.cli import Parser

    parser = Parser(
        prog="python -m tinymixer.data",
        description="Write NumPy arrays as a CIFAR-layout data folder that examples/cifar10.py --data-dir trains on. "
                    "ARRAYS is an .npz file (np.savez) holding either x_train, y_train, x_test, y_test, or images "
                    "and labels (then --test-size images are held out at random as the test set); optionally "
                    "class_names. Images: (N, H, W) or (N, H, W, C), uint8 or integers 0..255 or floats in [0, 1].")
    parser.add_argument("arrays", type=Path, help="the .npz file")
    parser.add_argument("folder", type=Path, help="the folder to write (created; must not hold a data set yet)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="with images/labels: how many images to hold out as the test set (default: 20%%)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test split")
    parser.add_argument("--classes", help="comma-separated class names (default: class_names in the file, else "
                                          "0, 1, 2, ...)")
    args = parser.parse_args(argv)
    try:
        dataset = _dataset_from_npz(args.arrays, args.test_size, args.seed, args.classes)
        if is_cifar_folder(args.folder):
            raise DataError(f"{args.folder} already holds a data set; choose another folder or delete it first")
        save_folder(args.folder, dataset)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    h, w, c = dataset.image_shape
    print(f"wrote {args.folder}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} test images, "
          f"{h}x{w}x{c}, {dataset.num_classes} classes ({', '.join(dataset.class_names[:10])}"
          f"{', ...' if dataset.num_classes > 10 else ''})\n"
          f"train on it: python examples/cifar10.py --data-dir {args.folder}")
    return 0


def _dataset_from_npz(path: Path, test_size: int | None, seed: int, classes: str | None) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as an .npz file ({exc}); save the arrays with np.savez") from exc
    names = classes.split(",") if classes else arrays.get("class_names")
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        parts = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    elif {"images", "labels"} <= arrays.keys():
        images, labels = arrays["images"], arrays["labels"]
        size = test_size if test_size is not None else max(1, round(0.2 * len(labels)))
        parts = split_arrays(images, labels, size, seed)
    else:
        raise DataError(f"{path} holds {sorted(arrays)}; expected x_train, y_train, x_test, y_test or images, labels")
    return dataset_from_arrays(*parts, class_names=None if names is None else [str(n) for n in names])


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
