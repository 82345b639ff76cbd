"""Data: CIFAR-10 and any data set in its layout (download, verify, cache, load), images, augmentation, batches.

The CIFAR "python version" layout is a folder ``cifar-10-batches-py/`` holding pickled dicts: ``data_batch_1`` ...
``data_batch_5`` (training), ``test_batch``, and ``batches.meta`` (``label_names``, ``num_vis``). Each batch has
``data``, an (N, C*H*W) uint8 array with the channels as planes (all red, then all green, then all blue, each
row-major), and ``labels``, N class indices. Any folder in that layout loads: the number of training batches, the
image size (``num_vis`` = C*H*W, square images of C=3 channels unless ``batches.meta`` also gives ``num_channels``,
``image_height``, ``image_width``) and the number of classes (``label_names``) are read from the files.

Images stay uint8 (B, H, W, C) until a batch is taken; ``normalize`` maps them to [-1, 1] as the official input
pipeline does: ``(x - 127.5) / 127.5``.

The package by concern: ``cifar`` (finding, downloading, verifying and reading CIFAR-layout folders), ``dataset``
(a data set in memory, subsets and splits), ``pixels`` (scaling and resizing), ``synthetic`` (drawn shapes),
``augment`` and ``pipeline`` (a training batch), ``images`` (image files), ``permutations``; the everyday names
are here. ``python -m tinymixer.data``: NumPy arrays to a CIFAR-layout folder (``__main__``).
"""

from .cifar import (
    ARCHIVE_NAME,
    CIFAR10_MD5,
    CIFAR10_URL,
    DATA_DIR_ENV,
    FOLDER_NAME,
    default_data_dir,
    download,
    ensure_cifar10,
    find_data,
    is_cifar_folder,
    load_folder,
    md5sum,
    save_folder,
)
from .dataset import (
    DataError,
    Dataset,
    as_images,
    as_labels,
    class_balanced_subset,
    dataset_from_arrays,
    split_arrays,
)
from .pixels import batches, bilinear_resize, normalize, resize_batch
from .synthetic import SHAPE_NAMES, synthetic_shapes

__all__ = ["ARCHIVE_NAME", "CIFAR10_MD5", "CIFAR10_URL", "DATA_DIR_ENV", "FOLDER_NAME", "SHAPE_NAMES", "DataError",
           "Dataset", "as_images", "as_labels", "batches", "bilinear_resize", "class_balanced_subset",
           "dataset_from_arrays", "default_data_dir", "download", "ensure_cifar10", "find_data", "is_cifar_folder",
           "load_folder", "md5sum", "normalize", "resize_batch", "save_folder", "split_arrays", "synthetic_shapes",
           "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymixer.data``: NumPy arrays to a CIFAR-layout folder (see ``tinymixer/data/__main__.py``)."""
    from .__main__ import main as run

    return run(argv)
