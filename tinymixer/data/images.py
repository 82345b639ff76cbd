"""Images from files: read any picture as uint8 RGB, resize it as the official evaluation does, load folders.

Pictures are decoded with Pillow, which is already installed as a dependency of matplotlib: no new dependency.
Every function returns uint8 arrays, (H, W, 3) for one image and (N, H, W, 3) for many; ``tinymixer.data.normalize``
(called by ``tinymixer.training.evaluate.predict_logits``) then scales them to [-1, 1].

**Reading** (``read_image``). EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a phone photo is
upright as a viewer shows it. Grey, black-and-white and palette images become RGB with R = G = B (or the palette's
colours); CMYK, YCbCr and the other colour modes are converted by Pillow. 16-bit images keep their high byte
(v >> 8, so 65535 -> 255 and 257 v -> v), which is also what Pillow does with the 16-bit RGB PNGs it reads as 8-bit
RGB; 32-bit integer images (mode "I") are taken as 16-bit values, float images (mode "F") are clipped to 0..255.
Transparency (RGBA, LA, a palette's or a grey image's transparent colour) is composited on a white background by
default: the colour stored under a fully transparent pixel is arbitrary (often black) and is not what anyone sees,
and white is how such a picture shows on a page. ``background=None`` drops the alpha channel instead, which is
what the official TensorFlow decoders do (``decode_png(channels=3)``); for opaque pixels both agree. A file Pillow
cannot read raises ``tinymixer.data.DataError`` naming it.

**Resizing** (``resize_image``). The official input pipeline (``google-research/vision_transformer``,
``vit_jax/input_pipeline.py``, function ``get_data``; the same in its 2020 and 2024 versions) evaluates with
``im = tf.image.resize(im, [image_size, image_size])`` (the comment there: "usage of crop_size here is
intentional"): the whole picture is resized to the model's square resolution, the aspect ratio not kept, and then
scaled by ``(im - 127.5) / 127.5``. ``tf.image.resize`` defaults to bilinear interpolation without antialiasing,
with half-pixel centres: output pixel i samples the input at (i + 1/2) * in / out - 1/2, clamped to the image, from
its two nearest pixels on each axis. ``bilinear_resize`` is that computation in float32 (tested against
``tf.image.resize``'s own documented example); ``resize_image`` rounds it to uint8, a difference of at most 1/255
of the [-1, 1] range from the float32 pipeline. This is the default. ``crop=True`` resizes the shorter side to the
target (``round(side * target / shorter)``, same bilinear) and takes the centre crop, as
``vit_jax/preprocess.py``'s ``PreprocessImages(crop=True)`` does (that class then truncates to uint8 where this
module rounds); use it for pictures far from square, which the default squeezes.

**Folders.** ``list_image_folder`` / ``load_image_folder`` read the ImageFolder convention
(``root/<class name>/**/*.jpg|png|...``, classes sorted by name) with either ``root/train`` + ``root/test`` (or
``root/val``) subfolders or a seeded random hold-out, into a ``tinymixer.data.Dataset``; ``image_folder_to_cifar``
(also ``python -m tinymixer.data.images ROOT OUT --size 32``) writes it as a CIFAR-layout folder that
``examples/cifar10.py --data-dir OUT`` trains on. Images go straight into preallocated uint8 arrays.

**ImageNet-1k class names** (``imagenet1k_class_names``): the file ``imagenet1k_classes.txt`` shipped in this
package, one short name per line in the standard class-index order (line 1 = class 0 "tench", line 1000 = class
999 "toilet tissue"). Source: ``imagenet_classes.txt`` of the ``pytorch/hub`` repository (commit a6fc887, the list
the PyTorch Hub examples print), with its two duplicate names made unique as torchvision's
``_IMAGENET_CATEGORIES`` does: class 134 (the bird) "crane bird" (class 517, the machine, stays "crane") and class
639 "maillot tank suit" (class 638 stays "maillot"). ``tests/test_images.py`` checks 1000 unique names and those
indices.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..data import DataError, Dataset, bilinear_resize, is_cifar_folder, save_folder
from ..util import cli
from ..util.cli import Parser, number

WHITE = (255, 255, 255)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                              ".pbm", ".pnm", ".jfif"})
TEST_FOLDER_NAMES = ("test", "val")  # root/train + root/test (or root/val): the split is given by the folders
CLASS_NAMES_FILE = "imagenet1k_classes.txt"

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return height, width


# ----------------------------------------------------------------------------------------------------------------
# One file -> uint8 RGB


def read_image(path: Path | str, background: tuple[int, int, int] | None = WHITE, channels: int = 3) -> np.ndarray:
    """The picture in ``path`` at its own size: uint8 (H, W, channels), upright (EXIF orientation applied).

    ``channels`` 3 gives RGB, 1 grey (Pillow's ITU-R 601 luma). Transparent pixels are composited on
    ``background`` (white by default; None drops the alpha channel). A file that is missing or that Pillow cannot
    decode raises DataError naming it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder, not an image' if path.is_dir() else 'no such file'}")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # a rotated/mirrored copy, or the image itself
            pixels = _rgb_pixels(image, background)
    except UnidentifiedImageError:
        raise DataError(f"cannot read {path}: not an image format Pillow knows (is it an image?)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise DataError(f"cannot read {path}: the image data is damaged or truncated ({exc})") from None
    if channels == 1:
        pixels = np.asarray(Image.fromarray(pixels).convert("L"))
    return np.ascontiguousarray(pixels.reshape(pixels.shape[0], pixels.shape[1], channels))


def _rgb_pixels(image, background: tuple[int, int, int] | None) -> np.ndarray:
    """Any Pillow image -> uint8 (H, W, 3)."""
    mode = image.mode
    if mode.startswith("I"):  # "I;16", "I;16B", ...: 16-bit; "I": 32-bit integers, taken as 16-bit values
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = "A" in image.getbands() or "a" in mode or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("RGB"))
    rgba = np.asarray(image.convert("RGBA"))
    if background is None:
        return rgba[..., :3]
    alpha = rgba[..., 3:].astype(np.uint16)
    under = np.asarray(background, dtype=np.uint16).reshape(1, 1, 3)
    return ((rgba[..., :3] * alpha + under * (255 - alpha) + 127) // 255).astype(np.uint8)  # rounded blend


# ----------------------------------------------------------------------------------------------------------------
# Resizing as the official evaluation does


def resize_image(image: np.ndarray, size: Size, crop: bool = False) -> np.ndarray:
    """A uint8 (H, W, C) image resized to ``size`` (an int for square, or (height, width)): uint8.

    Default: the whole image to ``size``, aspect ratio not kept (the official evaluation). ``crop``: the shorter
    side to the target, then the centre crop (``vit_jax/preprocess.py``, ``PreprocessImages(crop=True)``)."""
    out_h, out_w = _pair(size)
    if crop:
        in_h, in_w = image.shape[:2]
        scale = max(out_h / in_h, out_w / in_w)  # for a square target: target / shorter side
        mid_h, mid_w = max(out_h, round(in_h * scale)), max(out_w, round(in_w * scale))
        resized = bilinear_resize(image, (mid_h, mid_w))
        top, left = (mid_h - out_h) // 2, (mid_w - out_w) // 2
        resized = resized[top:top + out_h, left:left + out_w]
    elif image.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(image, dtype=np.uint8)
    else:
        resized = bilinear_resize(image, (out_h, out_w))  # the one implementation, in data.py (batches too)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def load_image(path: Path | str, size: Size, crop: bool = False, background: tuple[int, int, int] | None = WHITE,
               channels: int = 3) -> np.ndarray:
    """``read_image`` then ``resize_image``: the picture in ``path`` as uint8 (height, width, channels)."""
    return resize_image(read_image(path, background, channels), size, crop)


def load_images(paths: Sequence[Path | str], size: Size, crop: bool = False,
                background: tuple[int, int, int] | None = WHITE, channels: int = 3, progress: bool = False
                ) -> np.ndarray:
    """Many pictures as one uint8 array (N, height, width, channels), filled in place (no list of copies). The
    first unreadable file raises DataError naming it."""
    height, width = _pair(size)
    images = np.empty((len(paths), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(_progress(paths, progress, "reading images")):
        images[i] = load_image(path, (height, width), crop, background, channels)
    return images


def _progress(items: Sequence, show: bool, desc: str) -> Iterable:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image", file=sys.stderr, disable=None)  # None: off when piped


# ----------------------------------------------------------------------------------------------------------------
# Folders of images


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def image_files(folder: Path | str, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and its subfolders with ``recursive``), sorted by path; hidden files and
    folders are skipped."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_image_folder(root: Path | str, class_names: Sequence[str] | None = None
                      ) -> tuple[list[Path], np.ndarray, list[str]]:
    """The ImageFolder convention: ``root/<class name>/...`` (images anywhere below each class folder). Returns
    (paths, labels as int64 indices, class names sorted by name).

    With ``class_names`` (e.g. a training split's) the labels index that list instead, and a folder whose name is
    not in it is a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give the folder that holds one subfolder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = image_files(root)
        hint = f" (it holds {len(loose)} images directly: put them into one subfolder per class)" if loose else ""
        raise DataError(f"{root} has no class subfolders{hint}; the layout is {root}/<class name>/<image files>")
    names = list(folders) if class_names is None else [str(n) for n in class_names]
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DataError(f"{root} has class folders that are not among the {len(names)} classes: "
                        f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for folder in folders:
        files = image_files(root / folder, recursive=True)
        if not files:
            empty.append(folder)
        paths += files
        labels += [names.index(folder)] * len(files)
    if class_names is None and empty:
        raise DataError(f"class folders without images in {root}: {', '.join(empty[:5])}"
                        f"{', ...' if len(empty) > 5 else ''} (image files end in "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths, np.asarray(labels, dtype=np.int64), names


def split_folder(root: Path | str) -> tuple[Path, Path] | None:
    """(root/train, root/test or root/val) when ``root`` is split into those subfolders, else None."""
    root = Path(root)
    tests = [root / name for name in TEST_FOLDER_NAMES if (root / name).is_dir()]
    if (root / "train").is_dir() and tests:
        return root / "train", tests[0]
    return None


def load_image_folder(root: Path | str, size: Size, test_fraction: float = 0.2, seed: int = 0, crop: bool = False,
                      background: tuple[int, int, int] | None = WHITE, channels: int = 3, progress: bool = False
                      ) -> Dataset:
    """An ImageFolder tree as a Dataset of uint8 images resized to ``size``.

    ``root/train`` + ``root/test`` (or ``root/val``): those are the training and test sets (the classes are the
    training folders'). Otherwise ``root/<class name>/...`` and a seeded random ``test_fraction`` of the images
    (at least one) is held out as the test set."""
    split = split_folder(root)
    if split is not None:
        train_paths, train_labels, names = list_image_folder(split[0])
        test_paths, test_labels, _ = list_image_folder(split[1], class_names=names)
    else:
        paths, labels, names = list_image_folder(root)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        if len(paths) < 2:
            raise DataError(f"{root} holds {len(paths)} image(s); a training and a test set need at least 2")
        num_test = min(len(paths) - 1, max(1, round(test_fraction * len(paths))))
        order = np.random.default_rng(seed).permutation(len(paths))
        test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
        train_paths, train_labels = [paths[i] for i in train], labels[train]
        test_paths, test_labels = [paths[i] for i in test], labels[test]
    if not train_paths or not test_paths:
        raise DataError(f"{root}: the {'training' if not train_paths else 'test'} set has no images")
    return Dataset(load_images(train_paths, size, crop, background, channels, progress), train_labels,
                   load_images(test_paths, size, crop, background, channels, progress), test_labels, names)


def image_folder_to_cifar(root: Path | str, out: Path | str, size: Size, test_fraction: float = 0.2, seed: int = 0,
                          crop: bool = False, background: tuple[int, int, int] | None = WHITE, channels: int = 3,
                          progress: bool = False) -> Dataset:
    """Write an ImageFolder tree (``load_image_folder``) as a CIFAR-layout folder ``out``, which
    ``examples/cifar10.py --data-dir OUT`` trains on. Refuses to overwrite a data set already in ``out``. Returns
    the Dataset written."""
    if is_cifar_folder(out):
        raise DataError(f"{out} already holds a data set; choose another folder or delete it first")
    dataset = load_image_folder(root, size, test_fraction, seed, crop, background, channels, progress)
    save_folder(out, dataset, train_batches=min(5, len(dataset.train_labels)))  # no empty batch files
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# Class names


def read_class_names(path: Path | str) -> list[str]:
    """Class names from a text file, one per line in class-index order (trailing blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names from {path} ({exc})") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DataError(f"{path} holds no class names; write one name per line")
    if "" in names:
        raise DataError(f"{path}: line {names.index('') + 1} is empty; write one class name per line")
    return names


def imagenet1k_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (0 "tench", 1 "goldfish", ..., 999 "toilet tissue"),
    from the file shipped with the package (source: see the module docstring)."""
    text = resources.files("tinymixer").joinpath(CLASS_NAMES_FILE).read_text(encoding="utf-8")
    return text.splitlines()


# ----------------------------------------------------------------------------------------------------------------
# python -m tinymixer.data.images ROOT OUT --size 32


def main(argv: list[str] | None = None) -> int:
    """Convert an ImageFolder tree into a CIFAR-layout folder."""

    parser = Parser(
        prog="python -m tinymixer.data.images",
        description="Write a folder of images in the ImageFolder layout (ROOT/<class name>/<images>, or "
                    "ROOT/train/<class name>/... and ROOT/test/<class name>/...) as a CIFAR-layout data folder "
                    "that examples/cifar10.py --data-dir trains on.")
    parser.add_argument("root", type=Path, help="the ImageFolder tree")
    parser.add_argument("out", type=Path, help="the folder to write (created; must not hold a data set yet)")
    parser.add_argument("--size", type=number(int, 1), default=32, help="image side in pixels after resizing")
    parser.add_argument("--crop", action="store_true",
                        help="resize the shorter side and take the centre crop (default: resize the whole image)")
    parser.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True), default=0.2,
                        help="without train/ and test/ subfolders: the share of images held out at random")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random hold-out")
    parser.add_argument("--grey", action="store_true", help="write 1-channel grey images")
    args = parser.parse_args(argv)
    try:
        data = image_folder_to_cifar(args.root, args.out, args.size, args.test_fraction, args.seed, args.crop,
                                     channels=1 if args.grey else 3, progress=True)
    except (DataError, ValueError) as error:
        cli.fail(str(error), "python -m tinymixer.data.images")  # one line, exit code 2
    print(f"wrote {args.out}: {len(data.train_labels)} training and {len(data.test_labels)} test images, "
          f"{args.size}x{args.size}, {data.num_classes} classes ({', '.join(data.class_names[:10])}"
          f"{', ...' if data.num_classes > 10 else ''})\n"
          f"train on it: python examples/cifar10.py --data-dir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
