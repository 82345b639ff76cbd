"""The one training-batch path (tinymixer/data/pipeline.py): a part of a batch is those rows of the whole batch
whatever is on, nothing is drawn for what is off, mixup is the convex mix it says, the transform sits between
augmentation and scaling."""

from __future__ import annotations

import numpy as np
import pytest

from tinymixer.data import normalize
from tinymixer.data.pipeline import Augmentation, training_batch

EVERYTHING = [Augmentation(crop_padding=2, flip=True, randaugment=(2, 9.0), random_erasing=0.5, cutmix=1.0),
              Augmentation(crop_padding=1, flip=True, mixup=0.4), Augmentation(flip=True)]


def data(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, n)


@pytest.mark.parametrize("augmentation", EVERYTHING)
def test_a_part_of_the_batch_is_those_rows_of_the_whole_batch(augmentation):
    images, labels = data()
    index = np.random.default_rng(1).permutation(20)[:12]
    whole = training_batch(images, labels, index, np.random.default_rng([3, 0, 7]), augmentation, dtype="float64")
    for rows in (slice(0, 5), slice(5, 12)):
        part = training_batch(images, labels, index, np.random.default_rng([3, 0, 7]), augmentation, dtype="float64",
                              rows=rows)
        np.testing.assert_array_equal(part[0], whole[0][rows])
        np.testing.assert_array_equal(part[1], whole[1][rows])
        if whole[2] is not None:
            np.testing.assert_array_equal(part[2][0], whole[2][0][rows])
            assert part[2][1] == whole[2][1]


def test_nothing_is_drawn_for_what_is_off_and_the_batch_is_the_scaled_images():
    images, labels = data()
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    batch, batch_labels, mix = training_batch(images, labels, np.arange(4, 10), rng, Augmentation())
    assert rng.bit_generator.state == before and mix is None
    np.testing.assert_array_equal(batch, normalize(images[4:10]))
    np.testing.assert_array_equal(batch_labels, labels[4:10])
    assert batch.dtype == np.float32


def test_mixup_is_the_convex_mix_of_each_image_and_its_partner():
    images, labels = data()
    index = np.arange(10)
    batch, own, (theirs, lam) = training_batch(images, labels, index, np.random.default_rng(2),
                                               Augmentation(mixup=0.4), dtype="float64")
    # the same draws without mixup's: the partners come from draw_mixup after crop/flip (none here)
    from tinymixer.data.augment import draw_mixup

    lam_again, partner = draw_mixup(np.random.default_rng(2), 10, 0.4)
    assert lam == lam_again and np.array_equal(theirs, labels[partner]) and np.array_equal(own, labels[:10])
    expected = lam * normalize(images[:10], "float64") + (1 - lam) * normalize(images[partner], "float64")
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-15)


def test_the_transform_comes_after_augmentation_and_before_scaling():
    images, labels = data()
    seen = []

    def transform(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.dtype)
        return 255 - batch

    batch, _, _ = training_batch(images, labels, np.arange(6), np.random.default_rng(0), Augmentation(mixup=0.2),
                                 transform=transform)
    assert seen == [np.uint8, np.uint8]  # the batch and its partners, as uint8
    plain, _, _ = training_batch(255 - images, labels, np.arange(6), np.random.default_rng(0), Augmentation(mixup=0.2))
    np.testing.assert_array_equal(batch, plain)


def test_mixup_and_cutmix_together_are_refused():
    with pytest.raises(ValueError, match="choose one"):
        Augmentation(mixup=0.2, cutmix=1.0)
