"""CIFAR-10 (and any data set in its layout): download, verify, cache, load; batches; augmentation.

The CIFAR "python version" layout is a folder ``cifar-10-batches-py/`` holding pickled dicts: ``data_batch_1`` ...
``data_batch_5`` (training), ``test_batch``, and ``batches.meta`` (``label_names``, ``num_vis``). Each batch has
``data``, an (N, C*H*W) uint8 array with the channels as planes (all red, then all green, then all blue, each
row-major), and ``labels``, N class indices. Any folder in that layout loads: the number of training batches, the
image size (``num_vis`` = C*H*W, square images of C=3 channels unless ``batches.meta`` also gives ``num_channels``,
``image_height``, ``image_width``) and the number of classes (``label_names``) are read from the files.

Images stay uint8 (B, H, W, C) until a batch is taken; ``normalize`` maps them to [-1, 1] as the official input
pipeline does: ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.files import atomic_open

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the archive
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
DATA_DIR_ENV = "TINYMIXER_DATA"


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


# ----------------------------------------------------------------------------------------------------------------
# Finding, downloading and verifying


def default_data_dir() -> Path:
    """``$TINYMIXER_DATA``, else ``$XDG_CACHE_HOME/tinymixer``, else ``~/.cache/tinymixer``."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tinymixer"


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar. The bytes go to a temporary file beside ``dest``, which is
    renamed only after the download is complete (and its MD5 matches): an interrupted download never leaves a
    file that looks complete."""
    from tqdm import tqdm

    with atomic_open(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        size, digest = 0, hashlib.md5()
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                  disable=None if progress else True) as bar:  # None: off when piped
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                size += len(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if total is not None and size != total:
            raise DataError(f"download of {url} stopped after {size} of {total} bytes; try again")
        if md5 is not None and (got := digest.hexdigest()) != md5:
            raise DataError(f"downloaded {url} but its MD5 is {got}, expected {md5}: the file is corrupt; try again")
    return dest


def _missing_data_message(data_dir: Path, why: str, download_failed: bool = False) -> str:
    fetch = ("" if download_failed else "let the script download it (needs internet: leave out --no-download), "
             "or ")
    return (
        f"CIFAR-10 is not available: {why}.\n"
        f"To get it, {fetch}download {CIFAR10_URL} on a machine with internet\n"
        f"and put the file {ARCHIVE_NAME} (or its extracted folder {FOLDER_NAME}/) into {data_dir}\n"
        f"(choose another folder with --data-dir or ${DATA_DIR_ENV}).\n"
        f"Without CIFAR-10: train on your own images or arrays (--data-dir; `python -m tinymixer.data` makes a folder "
        f"from NumPy arrays), e.g. the 8x8 digits scikit-learn bundles: README, \"Train on your own data\"."
    )


def ensure_cifar10(data_dir: Path | str | None = None, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                   download_ok: bool = True, progress: bool = True) -> Path:
    """The path of an extracted CIFAR-format folder under ``data_dir``, fetching and extracting it if needed.

    In order: an extracted ``cifar-10-batches-py/`` is used as it is; else a cached archive is verified (MD5) and
    extracted, a corrupt one fetched again; else the archive is downloaded. Without network and without data,
    a DataError says what to download and where to put it.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = data_dir / FOLDER_NAME
    if (folder / "batches.meta").exists():
        return folder
    archive = data_dir / ARCHIVE_NAME
    if archive.exists() and md5sum(archive) != md5:
        if not download_ok:
            raise DataError(_missing_data_message(data_dir, f"{archive} is corrupt (wrong MD5); delete it"))
        print(f"{archive} is corrupt (its MD5 is not {md5}); fetching it again")
        archive.unlink()
    if not archive.exists():
        if not download_ok:
            raise DataError(_missing_data_message(data_dir, f"neither {folder} nor {archive} exists"))
        created = not data_dir.exists()
        try:
            download(url, archive, md5, progress=progress)
        except (urllib.error.URLError, OSError) as exc:
            if created:  # leave nothing behind: the cache folder was made for this download
                shutil.rmtree(data_dir, ignore_errors=True)
            raise DataError(_missing_data_message(data_dir, f"the download of {url} failed ({exc})",
                                                  download_failed=True)) from exc
    _extract(archive, data_dir)
    if not (folder / "batches.meta").exists():
        raise DataError(f"{archive} did not contain {FOLDER_NAME}/batches.meta; is it the CIFAR-10 python archive?")
    return folder


def is_cifar_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds a data set in the CIFAR layout (``batches.meta`` beside its batches)."""
    return (Path(folder) / "batches.meta").is_file()


def find_data(data_dir: Path | str | None = None, download: bool | None = None, url: str = CIFAR10_URL,
              md5: str = CIFAR10_MD5, progress: bool = True) -> Path:
    """The CIFAR-layout folder to train on.

    ``data_dir`` given (the user pointed at it): it must be a CIFAR-layout folder itself, or hold one (as
    ``cifar-10-batches-py/`` or as its only CIFAR-layout subfolder), or hold the CIFAR-10 archive, which is then
    extracted. Nothing is downloaded into it unless ``download`` is True: a folder of the user's is never filled
    with CIFAR-10 by surprise. Otherwise a DataError says what was looked for and what is there.

    ``data_dir`` None: the cache (``default_data_dir()``), where CIFAR-10 is downloaded once unless ``download``
    is False.
    """
    if data_dir is None:
        return ensure_cifar10(default_data_dir(), url, md5, download_ok=download is not False, progress=progress)
    data_dir = Path(data_dir).expanduser()
    if is_cifar_folder(data_dir):
        return data_dir
    if data_dir.is_file():
        raise DataError(f"--data-dir {data_dir} is a file; give the folder that holds the data set (a folder with "
                        f"batches.meta, data_batch_1.. and test_batch, or its parent)")
    if is_cifar_folder(data_dir / FOLDER_NAME):
        return data_dir / FOLDER_NAME
    inside = sorted(p for p in data_dir.iterdir() if p.is_dir() and is_cifar_folder(p)) if data_dir.is_dir() else []
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise DataError(f"{data_dir} holds several data sets ({', '.join(p.name for p in inside)}); point --data-dir "
                        f"at the one to use")
    if (data_dir / ARCHIVE_NAME).exists() or download:
        return ensure_cifar10(data_dir, url, md5, download_ok=bool(download), progress=progress)
    if not data_dir.exists():
        found = "it does not exist"
    else:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in data_dir.iterdir())
        found = f"it holds {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else "it is empty"
        if any(n.startswith(("data_batch_", "test_batch")) for n in names):
            found += " (batches without batches.meta: the class names and image shape are missing)"
    raise DataError(f"no data set in {data_dir}: {found}. --data-dir takes a folder in the CIFAR layout "
                    f"(batches.meta, data_batch_1.., test_batch; `python -m tinymixer.data` makes one from NumPy "
                    f"arrays) or its parent. To download CIFAR-10 into it, add --download.")


def _extract(archive: Path, data_dir: Path) -> None:
    """Extract into a temporary folder, then rename: a half-extracted folder never looks complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links out of the folder
            else:  # Python < 3.10.12: check the member names ourselves
                for member in tar.getmembers():
                    if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                        raise DataError(f"{archive} contains an unsafe path {member.name!r}")
                tar.extractall(tmp)  # noqa: S202 - member names checked above
        src = tmp / FOLDER_NAME
        if src.exists():
            os.replace(src, data_dir / FOLDER_NAME)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive} could not be extracted ({exc}); delete it and fetch it again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Reading the pickled batches


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")  # noqa: S301 - the CIFAR format is pickles
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}); is it a CIFAR-format batch?") from exc
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def load_folder(folder: Path | str) -> Dataset:
    """Load every ``data_batch_*`` (training) and ``test_batch`` of a CIFAR-format folder."""
    folder = Path(folder)
    meta_path = folder / "batches.meta"
    train_paths = sorted(folder.glob("data_batch_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if not meta_path.exists() or not train_paths or not (folder / "test_batch").exists():
        raise DataError(f"{folder} is not a CIFAR-format folder: it needs batches.meta, data_batch_1.. and "
                        f"test_batch")
    meta = _unpickle(meta_path)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    num_vis = int(meta.get("num_vis", 3072))
    channels = int(meta.get("num_channels", 3))
    side = int(round((num_vis / channels) ** 0.5))
    height, width = int(meta.get("image_height", side)), int(meta.get("image_width", side))
    if channels * height * width != num_vis:
        raise DataError(f"{meta_path}: num_vis={num_vis} is not channels x height x width; add num_channels, "
                        f"image_height and image_width to it")

    def read(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for path in paths:
            batch = _unpickle(path)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != num_vis:
                raise DataError(f"{path}: data has shape {data.shape}, expected (N, {num_vis})")
            images.append(data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))  # planes -> (N, H, W, C)
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        x, y = np.concatenate(images), np.concatenate(labels)
        if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() >= len(names))):
            raise DataError(f"labels in {folder} do not match the images or the {len(names)} classes")
        return np.ascontiguousarray(x), y

    train_x, train_y = read(train_paths)
    test_x, test_y = read([folder / "test_batch"])
    return Dataset(train_x, train_y, test_x, test_y, names)


def save_folder(folder: Path | str, dataset: Dataset, train_batches: int = 5) -> Path:
    """Write a Dataset in the CIFAR layout (used by the tests, and to bring other data to the training script)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w, c = dataset.image_shape

    def dump(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, H, W, C) -> planes
        with open(path, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, f)

    meta = {b"label_names": [n.encode() for n in dataset.class_names], b"num_vis": h * w * c,
            b"num_channels": c, b"image_height": h, b"image_width": w}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    for i, part in enumerate(np.array_split(np.arange(len(dataset.train_labels)), train_batches), start=1):
        dump(folder / f"data_batch_{i}", dataset.train_images[part], dataset.train_labels[part])
    dump(folder / "test_batch", dataset.test_images, dataset.test_labels)
    return folder


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


# ----------------------------------------------------------------------------------------------------------------
# Batches, scaling, augmentation


def normalize(images: np.ndarray, dtype: str | np.dtype = np.float32) -> np.ndarray:
    """uint8 pixels -> [-1, 1], as the official input pipeline: (x - 127.5) / 127.5."""
    out = images.astype(dtype)
    out -= 127.5
    out *= 1.0 / 127.5
    return out


def _sample_points(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tf.image.resize's bilinear sampling along one axis (half-pixel centres, float32 as in TensorFlow's kernel):
    for each output index, the lower and upper input index and the weight of the upper one."""
    where = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5)
    floor = np.floor(where)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(where), n_in - 1).astype(np.intp)
    return lower, upper, (where - floor).astype(np.float32)


def bilinear_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``tf.image.resize(images, size)`` (bilinear, no antialiasing, half-pixel centres; the official input
    pipeline's resize) of (..., H, W, C) images -- one image or a batch: float32 (..., height, width, C). Each output
    pixel mixes its four nearest input pixels, left-right first, then top-bottom, as TensorFlow's kernel does."""
    out_h, out_w = size
    in_h, in_w = images.shape[-3:-1]
    top_i, bottom_i, y_lerp = _sample_points(in_h, out_h)
    left_i, right_i, x_lerp = _sample_points(in_w, out_w)
    x_lerp = x_lerp[:, None]  # (W_out, 1), against (..., H_out, W_out, C)
    top_rows = np.take(images, top_i, axis=-3).astype(np.float32)  # (..., H_out, W_in, C)
    bottom_rows = np.take(images, bottom_i, axis=-3).astype(np.float32)
    top = top_rows[..., left_i, :] + (top_rows[..., right_i, :] - top_rows[..., left_i, :]) * x_lerp
    bottom = bottom_rows[..., left_i, :] + (bottom_rows[..., right_i, :] - bottom_rows[..., left_i, :]) * x_lerp
    return top + (bottom - top) * y_lerp[:, None, None]


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 batch (B, h, w, C) resized to (B, H, W, C) by ``bilinear_resize``, rounded back to uint8 (the same
    array when it already has that size)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return np.clip(np.round(bilinear_resize(images, size)), 0, 255).astype(np.uint8)


def batches(num: int, batch_size: int, rng: np.random.Generator | None, drop_last: bool = False
            ) -> Iterator[np.ndarray]:
    """Index arrays of successive batches over ``num`` items: shuffled when ``rng`` is given."""
    order = rng.permutation(num) if rng is not None else np.arange(num)
    stop = num - num % batch_size if drop_last else num
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# ----------------------------------------------------------------------------------------------------------------
# A small offline data set for demos and lessons


SHAPE_NAMES = ["disc", "square", "cross", "ring", "triangle", "bar"]


def synthetic_shapes(num: int, size: int = 16, seed: int = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``num`` images (uint8, (num, size, size, 3)) of one coloured shape each on a noisy coloured background,
    at a random position and scale; labels index ``SHAPE_NAMES``. Needs no download and is hard enough that a model
    must look at spatial structure (colour and position are random), so lessons can train on it in seconds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    labels = rng.integers(0, len(SHAPE_NAMES), num)
    images = np.empty((num, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        r = rng.uniform(0.2, 0.35) * size  # the shape's half-size
        cy, cx = rng.uniform(r, size - r, 2)
        dy, dx = (yy - cy) / r, (xx - cx) / r
        dist = np.hypot(dy, dx)
        mask = [dist <= 1,  # disc
                np.maximum(abs(dy), abs(dx)) <= 0.8,  # square
                (np.minimum(abs(dy), abs(dx)) <= 0.25) & (np.maximum(abs(dy), abs(dx)) <= 1),  # cross
                (dist <= 1) & (dist >= 0.55),  # ring
                (dy <= 0.8) & (dy >= 1.6 * abs(dx) - 0.8),  # triangle (apex up)
                (abs(dy) <= 0.3) & (abs(dx) <= 1)][label]  # horizontal bar
        background, foreground = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        while np.abs(foreground - background).sum() < 0.6:  # keep the shape visible
            foreground = rng.uniform(0, 1, 3)
        picture = np.where(mask[..., None], foreground, background) + noise * rng.standard_normal((size, size, 3))
        images[i] = np.clip(picture * 255, 0, 255).astype(np.uint8)
    return images, labels


# ----------------------------------------------------------------------------------------------------------------
# python -m tinymixer.data: NumPy arrays -> a CIFAR-layout folder that examples/cifar10.py trains on


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
