"""Augmentation on uint8 batches (B, H, W, C), vectorised in NumPy: the standard CIFAR crop and flip, mixup, and the
strong kind: RandAugment, CutMix and random erasing.

Every augmentation is split the same way: ``draw_*(rng, batch_size, ...)`` makes the random choices for a whole
(global) batch, ``apply_*(images, draws, rows)`` applies them to some of its rows (a slice or an
index array: which images of the batch ``images`` are). Augmenting rows separately equals augmenting the whole batch
and then taking the rows, so each rank of a data-parallel run augments its share exactly as a one-process run does.
The draws hold fractions of the image size rather than pixels, so they apply to images of any size (e.g. after an
on-the-fly resize).

RandAugment (Cubuk et al. 2020, https://arxiv.org/abs/1909.13719) follows the official TensorFlow implementation
that big_vision uses (``big_vision/pp/autoaugment.py``, since moved to ``pp/archive/``, forked from tensorflow/tpu's
EfficientNet ``autoaugment.py``; big_vision's configs write ``randaug(2,15)``, and magnitudes 0..30):

- each of ``num_ops`` layers picks one operation uniformly from the list and always applies it (the official code
  draws a probability per operation but never uses it), with the one shared magnitude M;
- the official list has 16 operations: AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, Color, Contrast,
  Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY, Cutout, SolarizeAdd (``ops="big_vision"``, the
  default). The paper's list (``ops="paper"``) has 14: Identity instead of Invert, Cutout and SolarizeAdd;
- the level-to-argument mapping divides M by 10 (``MAX_LEVEL``), with no clipping above it: Rotate 30 M/10 degrees,
  ShearX/Y 0.3 M/10, TranslateX/Y 100 M/10 pixels at 224 px, Cutout a square of half-side int(40 M/10) pixels at
  224 px, Color/Contrast/Brightness/Sharpness a blend factor 1.8 M/10 + 0.1 (1 at M = 5: so M = 0 is not the
  identity for these), Posterize int(4 M/10) bits, Solarize threshold int(256 M/10), SolarizeAdd int(110 M/10);
  Rotate, Shear and Translate are negated with probability 1/2 (per image and layer);
- geometric operations sample the nearest pixel (the default of the TensorFlow Addons transform the official code
  calls; coordinates rounded half away from zero, computed here in float64 where TensorFlow uses float32, which can
  differ only at exact ties) and fill what comes from outside the image with grey 128 (the official
  ``replace_value = [128] * 3``); Cutout fills with 128 too.

Where the official code relies on TensorFlow's uint8 arithmetic, its effective argument is used: the Solarize
threshold is compared as a uint8, so it wraps modulo 256 (M = 10: 256 -> 0, the whole image inverted; M = 15: 384 ->
128; big_vision issue #110 shows the wrap); Posterize shifts by 8 - bits, clamped by TensorFlow's shift kernel to at
most 7 (0 bits keeps 1 bit), and a negative shift (M >= 22.5) is taken to wrap as a uint8 too and so also keeps 1 bit.
One deliberate difference: the official Contrast blends towards ``sum(histogram) / 256``, the pixel count / 256 (196
at 224x224, 4 at 32x32), not the mean grey level its PIL model uses; here Contrast blends towards the mean grey
level, as PIL does. Translate and Cutout sizes are given for 224 px (the official pixel counts) and scale with the
image: on 32x32, TranslateX moves 100 * 32/224 = 14.3 M/10 pixels.

CutMix (Yun et al. 2019): one lam ~ Beta(alpha, alpha) and one box per batch, pasted from a partner image (a
permutation of the batch); the labels mix by the pasted area actually kept after clipping at the border. Random
erasing (Zhong et al. 2020): each image with probability p gets one rectangle of random area and aspect ratio filled
with a constant (the official CIFAR code's mean pixel by default).

``python -m tinymixer.tools.bench_augment`` measures images/s of each operation on CIFAR-shaped uint8 batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MAX_LEVEL = 10.0  # the official code divides magnitudes by this (no clipping: 15, 20, 30 go beyond)
FILL = 128  # the official fill of geometric operations and Cutout (grey)
REFERENCE_SIZE = 224  # the image side at which the official Translate (100) and Cutout (40) pixel counts apply
TRANSLATE_CONST = 100.0
CUTOUT_CONST = 40.0
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
CIFAR10_MEAN_PIXEL = (125, 123, 114)  # round(255 * (0.4914, 0.4822, 0.4465)): random erasing's official CIFAR fill

BIG_VISION_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
                  "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")
PAPER_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast",
             "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
OP_LISTS = {"big_vision": BIG_VISION_OPS, "paper": PAPER_OPS}


def fill_values(fill: int | Sequence[int] | None, channels: int) -> np.ndarray:
    """A fill colour as one uint8 value per channel: one number is used for every channel; ``None`` is random
    erasing's default, the CIFAR-10 mean pixel on RGB images and its mean (121) on others."""
    if fill is None:
        fill = CIFAR10_MEAN_PIXEL if channels == 3 else round(sum(CIFAR10_MEAN_PIXEL) / 3)
    values = np.asarray(fill).reshape(-1)
    if len(values) not in (1, channels) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"a fill colour is one value 0..255 or one per channel ({channels}), got {fill}")
    return np.broadcast_to(values.astype(np.uint8), (channels,))


def _check_batch(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise ValueError(f"expected a uint8 NumPy batch (B, H, W, C), got {type(images).__name__} "
                         f"{getattr(images, 'dtype', '')} {shape}")
    return images



# ----------------------------------------------------------------------------------------------------------------
# The standard CIFAR augmentation (random crop and flip) and mixup: the same draw/apply split


def augment(images: np.ndarray, rng: np.random.Generator, crop_padding: int = 4, flip: bool = True) -> np.ndarray:
    """The standard CIFAR augmentation on a uint8 batch (B, H, W, C): pad every side with ``crop_padding`` zero
    pixels, take a random H x W crop, and mirror left-right with probability 1/2. Returns a new array."""
    return apply_augmentation(images, draw_augmentation(rng, len(images), crop_padding, flip))


def draw_augmentation(rng: np.random.Generator, batch_size: int, crop_padding: int = 4, flip: bool = True
                      ) -> dict[str, Any]:
    """The random choices of ``augment`` for a batch: crop offsets ``dy``, ``dx`` (each 0..2p) and which images to
    ``mirror``. Drawing them for the whole batch, then applying them to some rows (``apply_augmentation``), lets
    each rank of a data-parallel run augment its share of a global batch exactly as a one-process run would."""
    draws: dict[str, Any] = {"padding": crop_padding}
    if crop_padding:
        draws["dy"], draws["dx"] = rng.integers(0, 2 * crop_padding + 1, size=(2, batch_size))
    if flip:
        draws["mirror"] = rng.random(batch_size) < 0.5
    return draws


def apply_augmentation(images: np.ndarray, draws: dict[str, Any], rows: Any = slice(None)) -> np.ndarray:
    """Crop and mirror ``images`` (uint8 (n, H, W, C)) as ``draws`` says for the batch ``rows`` (a slice or
    index array: which of the batch's images these are; default all). Returns a new array."""
    n, h, w, _ = images.shape
    out = images.copy()
    if "dy" in draws:
        p, dy, dx = draws["padding"], draws["dy"][rows], draws["dx"][rows]
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))  # (n, H+2p, W+2p, C)
        rows_y = dy[:, None] + np.arange(h)  # (n, H)
        cols_x = dx[:, None] + np.arange(w)  # (n, W)
        out = padded[np.arange(n)[:, None, None], rows_y[:, :, None], cols_x[:, None, :]]  # (n, H, W, C)
    if "mirror" in draws:
        mirror = draws["mirror"][rows]
        out[mirror] = out[mirror, :, ::-1]
    return out


def mixup(images: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """mixup (Zhang et al. 2018): blend the batch with a shuffled copy of itself, weight lam ~ Beta(alpha, alpha).

    Returns (mixed float images, labels, the partner labels, lam); the loss is
    lam * CE(labels) + (1 - lam) * CE(partner labels)."""
    lam, partner = draw_mixup(rng, len(labels), alpha)
    mixed = lam * images + (1.0 - lam) * images[partner]
    return mixed.astype(images.dtype, copy=False), labels, labels[partner], lam


def draw_mixup(rng: np.random.Generator, batch_size: int, alpha: float) -> tuple[float, np.ndarray]:
    """The random choices of ``mixup`` for a batch: the weight lam ~ Beta(alpha, alpha) and each image's partner."""
    return float(rng.beta(alpha, alpha)), rng.permutation(batch_size)

# ----------------------------------------------------------------------------------------------------------------
# The operations, each on a whole uint8 batch (n, H, W, C); arguments are scalars or one value per image


def identity(images: np.ndarray) -> np.ndarray:
    """The images unchanged (a copy)."""
    return images.copy()


def invert(images: np.ndarray) -> np.ndarray:
    """255 - x for every pixel (PIL ``ImageOps.invert``)."""
    return 255 - images


def _histograms(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 256-bin histogram of each channel of each image, (n * C, 256), and each pixel's flat bin index (the
    images' shape): bin (i * C + c) * 256 + value. ``_apply_luts`` maps the pixels through one table per channel."""
    n, _, _, c = images.shape
    index = images + (np.arange(n * c, dtype=np.intp) * 256).reshape(n, 1, 1, c)
    return np.bincount(index.ravel(), minlength=n * c * 256).reshape(n * c, 256), index


def _apply_luts(luts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Pixels mapped through per-(image, channel) tables ``luts`` (n * C, 256) of values 0..255."""
    return luts.astype(np.uint8).ravel().take(index)


def autocontrast(images: np.ndarray) -> np.ndarray:
    """Stretch each channel of each image linearly so that its darkest pixel becomes 0 and its brightest 255
    (PIL ``ImageOps.autocontrast``; the official float32 formula ``x * scale - lo * scale``, clipped and truncated).
    A channel of one value stays as it is."""
    hist, index = _histograms(images)
    filled = hist > 0
    lo = np.argmax(filled, axis=1)[:, None].astype(np.float32)  # the darkest and the brightest value present
    hi = (255 - np.argmax(filled[:, ::-1], axis=1))[:, None].astype(np.float32)
    span = hi - lo
    scale = np.float32(255.0) / np.where(span > 0, span, np.float32(1.0))
    values = np.arange(256, dtype=np.float32)
    luts = np.where(span > 0, np.clip(values * scale + (-lo * scale), 0.0, 255.0), values)
    return _apply_luts(luts, index)


def equalize(images: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each channel of each image (PIL ``ImageOps.equalize``): with the histogram h and
    step = (number of pixels - count of the brightest value) // 255, value v maps to
    (sum of h below v + step // 2) // step; a channel whose step is 0 stays as it is."""
    hist, index = _histograms(images)
    rows = np.arange(len(hist))
    last = hist[rows, 255 - np.argmax(hist[:, ::-1] > 0, axis=1)]  # the count of the last non-empty bin
    step = (hist.sum(axis=1) - last) // 255
    safe = np.maximum(step, 1)[:, None]
    luts = np.zeros_like(hist)
    luts[:, 1:] = (np.cumsum(hist, axis=1)[:, :-1] + safe // 2) // safe  # the sum of h below v, scaled
    luts = np.where(step[:, None] > 0, np.clip(luts, 0, 255), np.arange(256))
    return _apply_luts(luts, index)


def posterize(images: np.ndarray, bits: int) -> np.ndarray:
    """Keep the ``bits`` (1..8) highest bits of every pixel, zero the others (PIL ``ImageOps.posterize``)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize keeps 1..8 bits, got {bits}")
    return images & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(images: np.ndarray, threshold: int) -> np.ndarray:
    """Invert the pixels at or above ``threshold``: x < t ? x : 255 - x (PIL ``ImageOps.solarize``; t = 0 inverts
    every pixel, t >= 256 none)."""
    return np.where(images < threshold, images, 255 - images)


def solarize_add(images: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    """Add ``addition`` to the pixels below ``threshold``, clipped to 0..255; the others stay."""
    added = np.clip(images.astype(np.int16) + addition, 0, 255).astype(np.uint8)
    return np.where(images < threshold, added, images)


def blend(degenerate: np.ndarray, images: np.ndarray, factor: float) -> np.ndarray:
    """``degenerate + factor * (images - degenerate)`` in float32, clipped to 0..255 and truncated to uint8, as the
    official ``blend`` and PIL's ``Image.blend`` (which ``ImageEnhance`` uses): factor 0 gives the degenerate
    image, 1 the images, above 1 extrapolates. ``degenerate`` broadcasts against ``images``."""
    if factor == 0.0:
        return np.broadcast_to(degenerate, images.shape).copy()
    if factor == 1.0:
        return images.copy()
    low = degenerate.astype(np.float32)
    mixed = low + np.float32(factor) * (images.astype(np.float32) - low)
    if not 0.0 < factor < 1.0:
        np.clip(mixed, 0.0, 255.0, out=mixed)
    return mixed.astype(np.uint8)


def grayscale(images: np.ndarray) -> np.ndarray:
    """The grey level (n, H, W, 1) uint8 of RGB images, as ``tf.image.rgb_to_grayscale``: the weights 0.2989,
    0.5870, 0.1140 on x / 255 in float32, times 255.5, truncated. One-channel images are their own grey level."""
    if images.shape[-1] == 1:
        return images.copy()
    if images.shape[-1] != 3:
        raise ValueError(f"grey levels need RGB (or one-channel) images, got {images.shape[-1]} channels")
    grey = (images.astype(np.float32) * np.float32(1.0 / 255.0)) @ GRAY_WEIGHTS
    return (grey * np.float32(255.5)).astype(np.uint8)[..., None]


def color(images: np.ndarray, factor: float) -> np.ndarray:
    """Saturation (PIL ``ImageEnhance.Color``): blend from the image's grey version (factor 0) through the image
    (1) and beyond."""
    return blend(grayscale(images), images, factor)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Contrast (PIL ``ImageEnhance.Contrast``): blend from a uniform image of the mean grey level (factor 0),
    truncated to an integer, through the image (1) and beyond."""
    mean = grayscale(images).mean(axis=(1, 2, 3))
    degenerate = np.clip(mean, 0, 255).astype(np.uint8)[:, None, None, None]
    return blend(degenerate, images, factor)


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    """Brightness (PIL ``ImageEnhance.Brightness``): blend from black (factor 0) through the image (1) and beyond."""
    return blend(np.zeros((1, 1, 1, 1), np.uint8), images, factor)


def sharpness(images: np.ndarray, factor: float) -> np.ndarray:
    """Sharpness (PIL ``ImageEnhance.Sharpness``): blend from a smoothed image (factor 0) through the image (1) to
    a sharpened one. The smoothed image is PIL's SMOOTH filter, the kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
    truncated, on the interior pixels; the one-pixel border keeps the original pixels (as the official code)."""
    smooth = images.copy()
    _, h, w, _ = images.shape
    if h >= 3 and w >= 3:
        p = images.astype(np.int16)  # at most 13 * 255 = 3315
        total = 4 * p[:, 1:-1, 1:-1]
        for dy in range(3):
            for dx in range(3):
                total += p[:, dy:h - 2 + dy, dx:w - 2 + dx]
        smooth[:, 1:-1, 1:-1] = np.clip(total.astype(np.float32) / np.float32(13.0), 0, 255).astype(np.uint8)
    return blend(smooth, images, factor)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (C++ ``std::round``, which TensorFlow's sampler uses)."""
    return np.copysign(np.floor(np.abs(values) + 0.5), values).astype(np.intp)


def affine(images: np.ndarray, matrices: np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Inverse-mapped nearest-neighbour transform of each image: output pixel (x, y) (column, row, from the top
    left) takes the input pixel nearest to ``matrices[i] @ (x, y, 1)``, a (n, 2, 3) array; positions outside the
    input take ``fill`` (one value, or one per channel). This is TensorFlow's image transform with nearest
    interpolation and a constant fill, as the official Rotate, Shear and Translate use it."""
    n, h, w, c = images.shape
    m = np.asarray(matrices, dtype=np.float64).reshape(n, 2, 3)[:, :, :, None, None]  # (n, 2, 3, 1, 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    src_x = _round_half_away(m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2])  # (n, H, W)
    src_y = _round_half_away(m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2])
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    flat = np.where(inside, (np.arange(n)[:, None, None] * h + src_y) * w + src_x, n * h * w)  # outside: the fill
    pixels = np.concatenate([images.reshape(n * h * w, c), fill_values(fill, c)[None]])
    return np.take(pixels, flat, axis=0)  # (n, H, W, C)


def _per_image(values: float | np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))


def rotate(images: np.ndarray, degrees: float | np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Rotate each image by ``degrees`` (per image or one value) counter-clockwise as displayed, about its centre
    ((W - 1) / 2, (H - 1) / 2), as ``tfa.image.rotate``; corners from outside take ``fill``."""
    n, h, w, _ = images.shape
    rad = np.deg2rad(_per_image(degrees, n))
    cos, sin = np.cos(rad), np.sin(rad)
    x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    return affine(images, np.stack([cos, -sin, x_off, sin, cos, y_off], axis=1), fill)


def shear_x(images: np.ndarray, level: float | np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Shear along x: output pixel (x, y) takes input (x + level * y, y) (PIL's affine (1, level, 0, 0, 1, 0))."""
    n = len(images)
    s, zero, one = _per_image(level, n), np.zeros(n), np.ones(n)
    return affine(images, np.stack([one, s, zero, zero, one, zero], axis=1), fill)


def shear_y(images: np.ndarray, level: float | np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Shear along y: output pixel (x, y) takes input (x, level * x + y) (PIL's affine (1, 0, 0, level, 1, 0))."""
    n = len(images)
    s, zero, one = _per_image(level, n), np.zeros(n), np.ones(n)
    return affine(images, np.stack([one, zero, zero, s, one, zero], axis=1), fill)


def translate_x(images: np.ndarray, pixels: float | np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Output pixel (x, y) takes input (x + pixels, y): the content moves left by ``pixels`` (right when negative),
    ``fill`` enters on the other side (PIL's affine (1, 0, pixels, 0, 1, 0), as the official TranslateX)."""
    n = len(images)
    t, zero, one = _per_image(pixels, n), np.zeros(n), np.ones(n)
    return affine(images, np.stack([one, zero, t, zero, one, zero], axis=1), fill)


def translate_y(images: np.ndarray, pixels: float | np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Output pixel (x, y) takes input (x, y + pixels): the content moves up by ``pixels`` (down when negative)."""
    n = len(images)
    t, zero, one = _per_image(pixels, n), np.zeros(n), np.ones(n)
    return affine(images, np.stack([one, zero, zero, zero, one, t], axis=1), fill)


def cutout(images: np.ndarray, pad: int, centres: np.ndarray, fill: int | Sequence[int] = FILL) -> np.ndarray:
    """Fill rows cy - pad .. cy + pad - 1 and columns cx - pad .. cx + pad - 1 (clipped to the image) of each image
    with ``fill``; ``centres`` is (n, 2) integer (cy, cx). pad 0 changes nothing."""
    _, h, w, _ = images.shape
    out = images.copy()
    if pad <= 0:
        return out
    cy, cx = centres[:, 0, None], centres[:, 1, None]
    rows = (np.arange(h) >= cy - pad) & (np.arange(h) < cy + pad)  # (n, H)
    cols = (np.arange(w) >= cx - pad) & (np.arange(w) < cx + pad)  # (n, W)
    out[rows[:, :, None] & cols[:, None, :]] = fill_values(fill, images.shape[-1])
    return out


# ----------------------------------------------------------------------------------------------------------------
# RandAugment: the official level-to-argument mapping, the draws, and their application


def enhance_factor(magnitude: float) -> float:
    """Color, Contrast, Brightness, Sharpness: the blend factor 1.8 M/10 + 0.1 (0.1 at M = 0, 1 at M = 5)."""
    return (magnitude / MAX_LEVEL) * 1.8 + 0.1


def posterize_bits(magnitude: float) -> int:
    """Posterize: int(4 M/10) bits, as TensorFlow's clamped uint8 shift makes it: 0 bits (shift 8) keeps 1 bit;
    more than 8 bits (a negative shift, M >= 22.5) wraps to a large uint8 shift, clamped to 7: also 1 bit."""
    bits = int((magnitude / MAX_LEVEL) * 4)
    return bits if 1 <= bits <= 8 else 1


def solarize_threshold(magnitude: float) -> int:
    """Solarize: int(256 M/10), compared as a uint8 (modulo 256): M = 0 and M = 10 invert every pixel, M = 15
    inverts those at or above 128, M = 9 those at or above 230."""
    return int((magnitude / MAX_LEVEL) * 256) % 256


def _apply_op(name: str, images: np.ndarray, magnitude: float, sign: np.ndarray, centre: np.ndarray,
              draws: dict[str, Any]) -> np.ndarray:
    """One RandAugment operation at ``magnitude`` on a group of images, with their signs and Cutout centres."""
    level = magnitude / MAX_LEVEL
    _, h, w, _ = images.shape
    fill, ref = draws["fill"], draws["reference_size"]
    if name == "Identity":
        return images
    if name == "AutoContrast":
        return autocontrast(images)
    if name == "Equalize":
        return equalize(images)
    if name == "Invert":
        return invert(images)
    if name == "Rotate":
        return rotate(images, sign * (level * 30.0), fill)
    if name == "Posterize":
        return posterize(images, posterize_bits(magnitude))
    if name == "Solarize":
        return solarize(images, solarize_threshold(magnitude))
    if name == "SolarizeAdd":
        return solarize_add(images, int(level * 110))
    if name in ENHANCE:
        return ENHANCE[name](images, enhance_factor(magnitude))
    if name == "ShearX":
        return shear_x(images, sign * (level * 0.3), fill)
    if name == "ShearY":
        return shear_y(images, sign * (level * 0.3), fill)
    if name == "TranslateX":
        return translate_x(images, sign * (level * (draws["translate_const"] * w / ref)), fill)
    if name == "TranslateY":
        return translate_y(images, sign * (level * (draws["translate_const"] * h / ref)), fill)
    if name == "Cutout":
        pad = int(level * (draws["cutout_const"] * math.sqrt(h * w) / ref))
        where = np.floor(centre * np.array([h, w])).astype(np.intp)  # uniform integers 0..H-1, 0..W-1
        return cutout(images, pad, where, fill)
    raise ValueError(f"unknown RandAugment operation {name!r}")


ENHANCE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}
KNOWN_OPS = frozenset(BIG_VISION_OPS + PAPER_OPS)


def draw_randaugment(rng: np.random.Generator, batch_size: int, num_ops: int, magnitude: float, *,
                     ops: str | Sequence[str] = "big_vision", translate_const: float = TRANSLATE_CONST,
                     cutout_const: float = CUTOUT_CONST, reference_size: int = REFERENCE_SIZE,
                     fill: int | Sequence[int] = FILL) -> dict[str, Any]:
    """The random choices of RandAugment(``num_ops``, ``magnitude``) for a batch: per image and layer, which
    operation (``choice``, uniform over ``ops``), the sign of Rotate/Shear/Translate (``sign``, +1 or -1 with
    probability 1/2 each) and the Cutout centre as fractions of the image (``centre``). ``ops``: "big_vision" (the
    official 16 operations), "paper" (the paper's 14) or a list of operation names. ``translate_const`` and
    ``cutout_const`` are the official pixel counts at ``reference_size`` px; on other sizes they scale with the
    image. The same generator state gives the same draws whatever the images are."""
    if isinstance(ops, str) and ops not in OP_LISTS:
        raise ValueError(f"ops must be one of {', '.join(OP_LISTS)} or a list of operation names, got {ops!r}")
    names = OP_LISTS[ops] if isinstance(ops, str) else tuple(ops)
    unknown = [n for n in names if n not in KNOWN_OPS]
    if unknown or not names:
        raise ValueError(f"unknown RandAugment operations {unknown}; known: {', '.join(sorted(KNOWN_OPS))}")
    if num_ops < 0 or magnitude < 0:
        raise ValueError(f"num_ops and magnitude must be >= 0, got {num_ops} and {magnitude}")
    return {
        "ops": names, "magnitude": float(magnitude), "translate_const": float(translate_const),
        "cutout_const": float(cutout_const), "reference_size": reference_size, "fill": fill,
        "choice": rng.integers(0, len(names), size=(batch_size, num_ops)),
        "sign": np.where(rng.random((batch_size, num_ops)) < 0.5, -1.0, 1.0),
        "centre": rng.random((batch_size, num_ops, 2)),
    }


def apply_randaugment(images: np.ndarray, draws: dict[str, Any], rows: Any = slice(None)) -> np.ndarray:
    """Apply RandAugment ``draws`` to ``images`` (uint8 (n, H, W, C)), the batch's ``rows`` (a slice or index
    array; default all). Layer by layer, each operation runs once on the group of images that chose it. Returns a
    new array."""
    out = _check_batch(images).copy()
    choice, sign, centre = draws["choice"][rows], draws["sign"][rows], draws["centre"][rows]
    if len(choice) != len(images):
        raise ValueError(f"{len(images)} images but the rows select {len(choice)} of the draws")
    for layer in range(choice.shape[1]):
        for k, name in enumerate(draws["ops"]):
            group = np.flatnonzero(choice[:, layer] == k)
            if group.size and name != "Identity":
                out[group] = _apply_op(name, out[group], draws["magnitude"], sign[group, layer],
                                       centre[group, layer], draws)
    return out


def randaugment(images: np.ndarray, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 15,
                **options: Any) -> np.ndarray:
    """RandAugment(``num_ops``, ``magnitude``) of a uint8 batch (draw, then apply to every row)."""
    return apply_randaugment(images, draw_randaugment(rng, len(images), num_ops, magnitude, **options))


# ----------------------------------------------------------------------------------------------------------------
# CutMix


def draw_cutmix(rng: np.random.Generator, batch_size: int, alpha: float = 1.0, prob: float = 1.0) -> dict[str, Any]:
    """The random choices of CutMix for a batch: whether to cut at all (``apply``, probability ``prob``), lam ~
    Beta(alpha, alpha), the box centre as fractions of the image (``centre``, (y, x)) and each image's
    ``partner`` (a permutation of the batch). All are drawn every time, so the generator advances the same way."""
    if alpha <= 0:
        raise ValueError(f"CutMix alpha must be > 0, got {alpha}")
    apply = bool(rng.random() < prob)
    lam = float(rng.beta(alpha, alpha))
    return {"apply": apply, "lam": lam, "centre": rng.random(2), "partner": rng.permutation(batch_size)}


def cutmix_box(draws: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    """The pasted box (y0, y1, x0, x1) on H x W images, as the CutMix authors' code: sides int(H sqrt(1 - lam)) and
    int(W sqrt(1 - lam)), centred at a uniform pixel, each side extending half the size (integer halves) and
    clipped at the border. Empty when ``apply`` is False."""
    if not draws["apply"]:
        return 0, 0, 0, 0
    cut = math.sqrt(1.0 - draws["lam"])
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(draws["centre"][0] * height), int(draws["centre"][1] * width)
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y0, y1, x0, x1


def apply_cutmix(images: np.ndarray, partner_images: np.ndarray, draws: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Paste the box of ``partner_images`` into ``images`` (both (n, H, W, C), any dtype): for the batch's rows
    ``rows``, the partners are the batch's images ``draws["partner"][rows]``, augmented as in the batch. The box is
    the same for every image. Returns (mixed images, lam), lam = 1 - (pasted area) / (H W), the weight of the
    images' own labels: the loss is lam * CE(labels) + (1 - lam) * CE(partner labels)."""
    if images.shape != partner_images.shape:
        raise ValueError(f"images {images.shape} and partner images {partner_images.shape} differ in shape")
    h, w = images.shape[1:3]
    y0, y1, x0, x1 = cutmix_box(draws, h, w)
    out = images.copy()
    out[:, y0:y1, x0:x1] = partner_images[:, y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def cutmix(images: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator, prob: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CutMix (Yun et al. 2019) of a batch, like ``mixup``: returns (mixed images, labels, the partner labels,
    lam), where lam is the fraction of each image that is still its own."""
    draws = draw_cutmix(rng, len(labels), alpha, prob)
    partner = draws["partner"]
    mixed, lam = apply_cutmix(images, images[partner], draws)
    return mixed, labels, labels[partner], lam


# ----------------------------------------------------------------------------------------------------------------
# Random erasing


def draw_random_erasing(rng: np.random.Generator, batch_size: int, prob: float = 0.5,
                        area: tuple[float, float] = (0.02, 0.4), aspect: float = 0.3, attempts: int = 100,
                        fill: int | Sequence[int] | None = None) -> dict[str, Any]:
    """The random choices of random erasing (Zhong et al. 2020; the defaults are the official CIFAR code's): which
    images to erase (probability ``prob``), and for each of up to ``attempts`` tries a target area (a uniform
    fraction in ``area`` of the image), an aspect ratio h/w (uniform in [aspect, 1/aspect]) and the top-left corner
    as fractions of the free room. The first try whose box fits the image is used (none fits: no erasing). The box
    takes ``fill`` (see ``fill_values``; default the official CIFAR code's mean pixel)."""
    if not 0 < aspect <= 1 or not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"random erasing needs 0 < aspect <= 1 and 0 < area[0] <= area[1] <= 1, got {aspect}, "
                         f"{area}")
    return {
        "erase": rng.random(batch_size) < prob, "fill": fill,
        "area": rng.uniform(area[0], area[1], (batch_size, attempts)),
        "aspect": rng.uniform(aspect, 1.0 / aspect, (batch_size, attempts)),
        "corner": rng.random((batch_size, attempts, 2)),
    }


def erasing_boxes(draws: dict[str, Any], height: int, width: int, rows: Any = slice(None)) -> np.ndarray:
    """The erased boxes (n, 4) as (y0, y1, x0, x1) for the batch's ``rows`` on H x W images (empty boxes where
    nothing is erased): sides round(sqrt(area * aspect)) and round(sqrt(area / aspect)), the first try that fits,
    at a uniform position."""
    erase, area, ratio, corner = (draws[k][rows] for k in ("erase", "area", "aspect", "corner"))
    target = area * (height * width)
    eh = np.round(np.sqrt(target * ratio)).astype(np.intp)
    ew = np.round(np.sqrt(target / ratio)).astype(np.intp)
    fits = (eh <= height) & (ew <= width)
    first = np.argmax(fits, axis=1)
    pick = np.arange(len(first))
    use = erase & fits[pick, first]
    eh, ew, corner = eh[pick, first] * use, ew[pick, first] * use, corner[pick, first]
    y0 = np.floor(corner[:, 0] * (height - eh + 1)).astype(np.intp)  # uniform 0..H-h
    x0 = np.floor(corner[:, 1] * (width - ew + 1)).astype(np.intp)
    return np.stack([y0, y0 + eh, x0, x0 + ew], axis=1)


def apply_random_erasing(images: np.ndarray, draws: dict[str, Any], rows: Any = slice(None)) -> np.ndarray:
    """Erase the drawn box of each of ``images`` (uint8 (n, H, W, C), the batch's ``rows``) with the fill value.
    Returns a new array."""
    n, h, w, _ = _check_batch(images).shape
    boxes = erasing_boxes(draws, h, w, rows)
    if len(boxes) != n:
        raise ValueError(f"{n} images but the rows select {len(boxes)} of the draws")
    ys, xs = np.arange(h), np.arange(w)
    in_rows = (ys >= boxes[:, 0, None]) & (ys < boxes[:, 1, None])  # (n, H)
    in_cols = (xs >= boxes[:, 2, None]) & (xs < boxes[:, 3, None])  # (n, W)
    out = images.copy()
    out[in_rows[:, :, None] & in_cols[:, None, :]] = fill_values(draws["fill"], images.shape[-1])
    return out


def random_erasing(images: np.ndarray, rng: np.random.Generator, prob: float = 0.5, **options: Any) -> np.ndarray:
    """Random erasing of a uint8 batch (draw, then apply to every row)."""
    return apply_random_erasing(images, draw_random_erasing(rng, len(images), prob, **options))


if __name__ == "__main__":  # the benchmark moved up to the programs (it times a training step, which imports this)
    raise SystemExit("python -m tinymixer.data.augment --bench moved: python -m tinymixer.tools.bench_augment --bench")
