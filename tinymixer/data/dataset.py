"""A data set in memory (uint8 images and labels, training and test), its subsets and splits, and checks of
arrays given as one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..util.numbers import is_whole


class DataError(RuntimeError):
    """The data could not be found, fetched or read; the message says what to do."""


@dataclass
class Dataset:
    """Images as uint8 (N, H, W, C), labels as int64 (N,), and the class names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_validation(self, size: int, seed: int = 0) -> Dataset:
        """Carve a validation set of ``size`` images out of the training set; it replaces the test set."""
        if not 0 < size < len(self.train_labels):
            raise ValueError(f"validation size must be in (0, {len(self.train_labels)}), got {size}")
        order = np.random.default_rng(seed).permutation(len(self.train_labels))
        val, train = order[:size], order[size:]
        return Dataset(self.train_images[train], self.train_labels[train], self.train_images[val],
                       self.train_labels[val], self.class_names)

    def limited(self, train: int | None = None, test: int | None = None, seed: int = 0) -> Dataset:
        """At most ``train`` training and ``test`` test images (None: all), each a seeded subset with every class
        in proportion (``class_balanced_subset``), in their original order."""
        for name, size in (("train", train), ("test", test)):
            if size is not None and not is_whole(size, 1):
                raise ValueError(f"{name} must be a whole number of images, at least 1 (or None: all); got {size!r}")
        keep_train = class_balanced_subset(self.train_labels, train, seed)
        keep_test = class_balanced_subset(self.test_labels, test, seed)
        return Dataset(self.train_images[keep_train], self.train_labels[keep_train], self.test_images[keep_test],
                       self.test_labels[keep_test], self.class_names)


def class_balanced_subset(labels: np.ndarray, size: int | None, seed: int = 0) -> np.ndarray | slice:
    """The indices (sorted) of ``size`` of the items, drawn at random (seeded) with every class in proportion to its
    share of ``labels`` (each class's count within one of ``size`` x its share), or ``slice(None)`` for all of them.

    Why not the first ``size``: data sorted by class (common for a user's own arrays) would give a few classes only.
    How: shuffle, give each item its rank within its class as a fraction of the class's size, (rank + 0.5) / count,
    and keep the ``size`` smallest fractions; every class's fractions are spread evenly over (0, 1), so each class
    gets its share."""
    if size is None or size >= len(labels):
        return slice(None)
    order = np.random.default_rng([seed, len(labels)]).permutation(len(labels))  # (N,) a random order
    shuffled = labels[order]
    _, inverse, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")  # positions in the random order, grouped by class
    rank = np.empty(len(labels), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # where each class begins in by_class
    rank[by_class] = np.arange(len(labels)) - np.repeat(starts, counts)  # rank of each item within its class
    fraction = (rank + 0.5) / counts[inverse]
    chosen = order[np.argsort(fraction, kind="stable")[:size]]
    return np.sort(chosen)


def as_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Images as uint8 (N, H, W, C), or a DataError that says how to fix them.

    Accepted: (N, H, W) grey or (N, H, W, C) arrays, of uint8, of integers in 0..255, or of floats in [0, 1]
    (scaled by 255) or in [0, 255] (rounded)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]  # grey images: one channel
    if images.ndim != 4:
        raise DataError(f"{name} must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        raise DataError(f"{name} have shape {images.shape}: channels first? Transpose to (N, H, W, C): "
                        f"np.transpose({name}, (0, 2, 3, 1))")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{name} are integers from {images.min()} to {images.max()}; 8-bit pixels are 0..255")
        return images.astype(np.uint8)
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise DataError(f"{name} contain NaN or inf values")
        low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise DataError(f"{name} are floats from {low:g} to {high:g}; give pixels in [0, 1] or [0, 255] (undo "
                            f"any normalisation first)")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.round(images * scale).astype(np.uint8)
    raise DataError(f"{name} have dtype {images.dtype}; give uint8 pixels (or integers 0..255, or floats in [0, 1])")


def as_labels(labels: np.ndarray, num: int, name: str = "labels") -> np.ndarray:
    """Labels as int64 (N,) class indices, or a DataError."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != num:
        raise DataError(f"{name} must be one class index per image ({num},), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{name} must be integer class indices 0..K-1, got dtype {labels.dtype} (for names, map them "
                        f"to indices and give the names as class_names)")
    if num and labels.min() < 0:
        raise DataError(f"{name} must be class indices 0..K-1, got {labels.min()}")
    return labels.astype(np.int64)


def dataset_from_arrays(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                        test_labels: np.ndarray, class_names: list[str] | None = None) -> Dataset:
    """A Dataset from NumPy arrays, each checked (see ``as_images`` for the pixel formats accepted)."""
    train_x, test_x = as_images(train_images, "training images"), as_images(test_images, "test images")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"training images are {train_x.shape[1:]} (H, W, C) but test images {test_x.shape[1:]}")
    train_y = as_labels(train_labels, len(train_x), "training labels")
    test_y = as_labels(test_labels, len(test_x), "test labels")
    num_classes = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) < num_classes:
        raise DataError(f"the labels go up to {num_classes - 1} but only {len(names)} class names were given")
    if len(train_x) == 0 or len(test_x) == 0:
        raise DataError("both the training and the test set need at least one image")
    return Dataset(train_x, train_y, test_x, test_y, names)


def split_arrays(images: np.ndarray, labels: np.ndarray, test_size: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``test_size`` random images (seeded) as the test set: (train_x, train_y, test_x, test_y)."""
    if len(images) != len(labels):  # else the split would pair images with other images' labels, or drop some
        raise DataError(f"{len(images)} images but {len(labels)} labels: give one label per image")
    if not 0 < test_size < len(labels):
        raise DataError(f"the test set size must be between 1 and {len(labels) - 1} (there are {len(labels)} "
                        f"images), got {test_size}")
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:test_size], order[test_size:]
    return images[train], labels[train], images[test], labels[test]
