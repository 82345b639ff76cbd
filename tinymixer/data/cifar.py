"""CIFAR-10 and any data set in its layout: find, download, verify, cache, read and write.

The CIFAR "python version" layout is a folder ``cifar-10-batches-py/`` holding pickled dicts: ``data_batch_1`` ...
``data_batch_5`` (training), ``test_batch``, and ``batches.meta`` (``label_names``, ``num_vis``). Each batch has
``data``, an (N, C*H*W) uint8 array with the channels as planes (all red, then all green, then all blue, each
row-major), and ``labels``, N class indices. Any folder in that layout loads: the number of training batches, the
image size (``num_vis`` = C*H*W, square images of C=3 channels unless ``batches.meta`` also gives ``num_channels``,
``image_height``, ``image_width``) and the number of classes (``label_names``) are read from the files.

Images stay uint8 (B, H, W, C) until a batch is taken; ``normalize`` maps them to [-1, 1] as the official input
pipeline does: ``(x - 127.5) / 127.5``."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..util.download import fetch
from ..util.files import file_digest
from ..util.numbers import is_whole
from .dataset import DataError, Dataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the archive
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
DATA_DIR_ENV = "TINYMIXER_DATA"


# ----------------------------------------------------------------------------------------------------------------
# Finding, downloading and verifying


def default_data_dir() -> Path:
    """``$TINYMIXER_DATA``, else ``$XDG_CACHE_HOME/tinymixer``, else ``~/.cache/tinymixer``."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tinymixer"


def md5sum(path: Path) -> str:
    """The MD5 the CIFAR-10 site publishes for its archive, of a file."""
    return file_digest(path, "md5")


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar (``util.download.fetch``). The bytes go to a ``.part`` file
    beside ``dest``, renamed only after the download is complete and its MD5 matches; a failed or cut download
    leaves nothing (a data set is fetched whole)."""
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    try:
        fetch(url, part, f"downloading {dest.name}", progress, timeout)
        if md5 is not None and (got := md5sum(part)) != md5:
            raise DataError(f"downloaded {url} but its MD5 is {got}, expected {md5}: the file is corrupt; try again")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
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
        f"from NumPy arrays), e.g. the 8x8 digits scikit-learn bundles: docs/training.md, \"Train on your own data\"."
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
              md5: str = CIFAR10_MD5, progress: bool = True,
              download_hint: str = "To download CIFAR-10 into it, add --download.") -> Path:
    """The CIFAR-layout folder to train on.

    ``data_dir`` given (the user pointed at it): it must be a CIFAR-layout folder itself, or hold one (as
    ``cifar-10-batches-py/`` or as its only CIFAR-layout subfolder), or hold the CIFAR-10 archive, which is then
    extracted. Nothing is downloaded into it unless ``download`` is True: a folder of the user's is never filled
    with CIFAR-10 by surprise. Otherwise a DataError says what was looked for and what is there.

    ``data_dir`` None: the cache (``default_data_dir()``), where CIFAR-10 is downloaded once unless ``download``
    is False. ``download_hint``: the error's last sentence, how to get CIFAR-10 instead (a program without
    --download says its own way).
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
                    f"arrays, `python -m tinymixer.data.images {data_dir} OUT --size 32` from a folder of images "
                    f"in one subfolder per class) or its parent. {download_hint}")


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
    """Write a Dataset in the CIFAR layout (used by the tests, and to bring other data to the training script):
    ``batches.meta``, ``data_batch_1..`` (``train_batches`` of them, fewer when there are fewer training images)
    and ``test_batch``. A data set already in ``folder`` is replaced, its surplus ``data_batch_*`` files removed
    (left there, ``load_folder`` would read them as part of the new one)."""
    if not is_whole(train_batches, 1):
        raise ValueError(f"train_batches must be a whole number, at least 1; got {train_batches!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w, c = dataset.image_shape
    batches = min(int(train_batches), max(1, len(dataset.train_labels)))

    def dump(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        data = images.transpose(0, 3, 1, 2).reshape(len(images), h * w * c)  # (N, H, W, C) -> planes
        with open(path, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, f)

    meta = {b"label_names": [n.encode() for n in dataset.class_names], b"num_vis": h * w * c,
            b"num_channels": c, b"image_height": h, b"image_width": w}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    for stale in folder.glob("data_batch_*"):
        suffix = stale.name.removeprefix("data_batch_")
        if suffix.isdigit() and int(suffix) > batches:
            stale.unlink()
    for i, part in enumerate(np.array_split(np.arange(len(dataset.train_labels)), batches), start=1):
        dump(folder / f"data_batch_{i}", dataset.train_images[part], dataset.train_labels[part])
    dump(folder / "test_batch", dataset.test_images, dataset.test_labels)
    return folder
