"""Pixels to the model's input: scaling to [-1, 1] as the official pipeline, the official bilinear resize, and
shuffled index batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

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
