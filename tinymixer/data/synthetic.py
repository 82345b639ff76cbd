"""Small offline data sets for demos and lessons (no download): drawn shapes, and local motifs."""

from __future__ import annotations

from collections.abc import Sequence

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


MOTIF_NAMES = ["x", "plus"]  # synthetic_motifs' default classes
MOTIFS = {  # the bright pixels of each 3x3 motif, (row, column): all have five, so only their arrangement differs
    "x": ((0, 0), (0, 2), (1, 1), (2, 0), (2, 2)),
    "plus": ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1)),
    "T": ((0, 0), (0, 1), (0, 2), (1, 1), (2, 1)),
    "L": ((0, 0), (1, 0), (2, 0), (2, 1), (2, 2)),
}


def synthetic_motifs(num: int, size: int = 16, seed: int = 0, names: Sequence[str] = tuple(MOTIF_NAMES)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``num`` grey images (uint8, (num, size, size, 1)) of noise (0..119) with one bright 3x3 motif (255) of
    ``names`` (keys of ``MOTIFS``; labels index ``names``; by default an "x" or a "plus"), at a uniformly random
    position. The classes differ only in how five bright pixels are arranged in a 3x3 window, anywhere in the
    image: a task made for what a convolution assumes (local patterns, the same everywhere), which lesson 17 trains
    a CNN and a Mixer on; lesson 18 pre-trains on x/plus and transfers to T/L."""
    unknown = [n for n in names if n not in MOTIFS]
    if unknown or len(names) < 2:
        raise ValueError(f"names must be two or more of {', '.join(MOTIFS)}, got {list(names)}")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (num, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, len(names), num)
    rows, cols = rng.integers(0, size - 2, (2, num))  # the motif's top-left corner
    for i, label in enumerate(labels):
        for dy, dx in MOTIFS[names[label]]:
            images[i, rows[i] + dy, cols[i] + dx, 0] = 255
    return images, labels
