"""A small offline data set of drawn shapes, for demos and lessons (no download)."""

from __future__ import annotations

import numpy as np

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
