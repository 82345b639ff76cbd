"""Data: CIFAR-10 and any data set in its layout, images, augmentation, training batches.

The package by concern: ``cifar`` (finding, downloading, verifying, reading and writing CIFAR-layout folders: the
layout is described there), ``dataset`` (a data set in memory, subsets and splits), ``pixels`` (scaling to [-1, 1]
and resizing), ``synthetic`` (drawn shapes, local motifs), ``augment`` and ``pipeline`` (a training batch),
``images`` (image files), ``permutations``; the everyday names are here. ``python -m tinymixer.data``: NumPy arrays to a
CIFAR-layout folder (``__main__``).
"""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use

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
from .synthetic import MOTIF_NAMES, SHAPE_NAMES, synthetic_motifs, synthetic_shapes

__all__ = ["ARCHIVE_NAME", "CIFAR10_MD5", "CIFAR10_URL", "DATA_DIR_ENV", "FOLDER_NAME", "SHAPE_NAMES", "DataError",
           "Dataset", "as_images", "as_labels", "batches", "bilinear_resize", "class_balanced_subset",
           "dataset_from_arrays", "default_data_dir", "download", "ensure_cifar10", "find_data", "is_cifar_folder",
           "load_folder", "md5sum", "normalize", "resize_batch", "save_folder", "split_arrays", "synthetic_shapes",
           "synthetic_motifs", "MOTIF_NAMES",
           "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymixer.data``: NumPy arrays to a CIFAR-layout folder (see ``tinymixer/data/__main__.py``)."""
    from .__main__ import main as run

    return run(argv)
