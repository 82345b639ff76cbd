"""tinymixer.data.augment: RandAugment's operations against Pillow and hand-worked values, the official
level-to-argument mapping, determinism, rows-vs-whole equality (data parallel), CutMix's label weight, random
erasing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tinymixer.data import augment as A

F = A.FILL


def _images(seed: int = 0, shape: tuple[int, ...] = (4, 9, 11, 3), low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _pil(fn, images: np.ndarray) -> np.ndarray:
    """Pillow's ``fn`` on each image of a batch."""
    return np.stack([np.asarray(fn(Image.fromarray(image))) for image in images])


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


# ----------------------------------------------------------------------------------------------------------------
# The operations


@pytest.mark.parametrize("mine, pillow", [
    (lambda x: A.solarize(x, 100), lambda im: ImageOps.solarize(im, 100)),
    (lambda x: A.solarize(x, 0), lambda im: ImageOps.solarize(im, 0)),
    (lambda x: A.posterize(x, 3), lambda im: ImageOps.posterize(im, 3)),
    (lambda x: A.posterize(x, 1), lambda im: ImageOps.posterize(im, 1)),
    (A.equalize, ImageOps.equalize),
    (A.invert, ImageOps.invert),
])
def test_pixel_ops_equal_pillow(mine, pillow) -> None:
    for images in (_images(0), _images(1, low=60, high=140)):  # full range, and a narrow one (Equalize works)
        np.testing.assert_array_equal(mine(images), _pil(pillow, images))


def test_autocontrast_against_pillow_and_by_hand() -> None:
    images = _images(1, low=60, high=140)
    assert _diff(A.autocontrast(images), _pil(ImageOps.autocontrast, images)) <= 1  # float32 (official) vs float64
    one = np.array([[[[50], [100]], [[150], [50]]]], np.uint8)  # lo 50, hi 150: x -> (x - 50) * 2.55, truncated
    np.testing.assert_array_equal(A.autocontrast(one)[..., 0], [[[0, 127], [255, 0]]])
    flat = np.full((1, 3, 3, 3), 77, np.uint8)
    np.testing.assert_array_equal(A.autocontrast(flat), flat)  # one value: unchanged


def test_equalize_by_hand() -> None:
    # 4 pixels 10, 10, 20, 30: step = (4 - 1) // 255 = 0 -> unchanged; a 256-pixel ramp is its own equalisation
    small = np.array([10, 10, 20, 30], np.uint8).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(A.equalize(small), small)
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(A.equalize(ramp), ramp)


def test_blend_is_pillows_blend() -> None:
    images, other = _images(2), _images(3)
    for factor in (0.0, 0.3, 1.0, 1.9, 2.8):
        ours = A.blend(other, images, factor)
        pillows = np.stack([np.asarray(Image.blend(Image.fromarray(o), Image.fromarray(i), factor))
                            for o, i in zip(other, images, strict=True)])
        np.testing.assert_array_equal(ours, pillows)


def test_grayscale_is_tensorflows_formula() -> None:
    pixel = np.array([10, 200, 30], np.uint8).reshape(1, 1, 1, 3)
    # (0.2989 * 10 + 0.5870 * 200 + 0.1140 * 30) / 255 * 255.5 = 124.05 -> 124
    assert A.grayscale(pixel).item() == 124
    assert _diff(A.grayscale(_images(4)), _pil(lambda im: im.convert("L"), _images(4))[..., None]) <= 1


@pytest.mark.parametrize("mine, enhancer", [(A.color, ImageEnhance.Color), (A.contrast, ImageEnhance.Contrast),
                                            (A.brightness, ImageEnhance.Brightness),
                                            (A.sharpness, ImageEnhance.Sharpness)])
@pytest.mark.parametrize("factor", [0.1, 0.5, 1.0, 1.9, 2.8])
def test_enhancements_against_pillow(mine, enhancer, factor: float) -> None:
    """Brightness is Pillow's exactly; the others differ by the rounding of their degenerate image (TensorFlow's grey
    level, a truncated mean and smoothing) by at most 1, times the factor's extrapolation."""
    images = _images(5)
    pillow = _pil(lambda im: enhancer(im).enhance(factor), images)
    tolerance = 0 if mine is A.brightness or factor == 1.0 else int(np.ceil(max(1.0, abs(1.0 - factor))))
    assert _diff(mine(images, factor), pillow) <= tolerance


def test_enhancements_by_hand() -> None:
    flat = np.full((2, 5, 5, 3), 90, np.uint8)
    np.testing.assert_array_equal(A.sharpness(flat, 2.8), flat)  # a flat image has nothing to sharpen
    np.testing.assert_array_equal(A.brightness(flat, 0.5), np.full_like(flat, 45))
    np.testing.assert_array_equal(A.brightness(flat, 3.0), np.full_like(flat, 255))  # extrapolated, clipped
    # grey levels 0 and 101 (101 * 0.9999 / 255 * 255.5 = 101.2, truncated): mean 50.5, truncated to 50
    two = np.array([[[[0, 0, 0]], [[101, 101, 101]]]], np.uint8)
    np.testing.assert_array_equal(A.contrast(two, 0.0), np.full_like(two, 50))


def test_translate_one_pixel_moves_pixels_and_fills() -> None:
    images = _images(6)
    left = A.translate_x(images, 1.0)
    np.testing.assert_array_equal(left[:, :, :-1], images[:, :, 1:])
    assert (left[:, :, -1] == F).all()
    down = A.translate_y(images, -1.0)
    np.testing.assert_array_equal(down[:, 1:], images[:, :-1])
    assert (down[:, 0] == F).all()
    for pixels in (1.0, -2.0, 3.0):  # Pillow's affine transform with the same matrix and fill
        pillow = _pil(lambda im, p=pixels: im.transform(im.size, Image.AFFINE, (1, 0, p, 0, 1, 0), fillcolor=(F,) * 3),
                      images)
        np.testing.assert_array_equal(A.translate_x(images, pixels), pillow)


def test_shear_by_hand() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    # output (x, y) takes input x + 0.5 y, rounded half away from zero; past the edge: the fill
    expected = [[0, 1, 2, 3], [5, 6, 7, F], [9, 10, 11, F], [14, 15, F, F]]
    np.testing.assert_array_equal(A.shear_x(image, 0.5)[0, ..., 0], expected)
    np.testing.assert_array_equal(A.shear_y(image.transpose(0, 2, 1, 3), 0.5)[0, ..., 0], np.transpose(expected))


def test_rotate_quarter_turns_and_zero() -> None:
    images = _images(7, shape=(3, 6, 6, 3))
    np.testing.assert_array_equal(A.rotate(images, 90.0), np.rot90(images, 1, axes=(1, 2)))  # counter-clockwise
    np.testing.assert_array_equal(A.rotate(images, -90.0), np.rot90(images, -1, axes=(1, 2)))
    np.testing.assert_array_equal(A.rotate(images, np.array([0.0, 180.0, 0.0]))[[0, 2]], images[[0, 2]])
    np.testing.assert_array_equal(A.rotate(images, 180.0)[1], images[1, ::-1, ::-1])
    corner = A.rotate(np.zeros((1, 9, 9, 3), np.uint8), 45.0)
    assert (corner[0, 0, 0] == F).all() and (corner[0, 4, 4] == 0).all()  # corners come from outside: grey


def test_cutout_and_solarize_add_by_hand() -> None:
    images = np.zeros((1, 6, 6, 3), np.uint8)
    out = A.cutout(images, 1, np.array([[2, 3]]))
    assert (out[0, 1:3, 2:4] == F).all() and out.sum() == 4 * 3 * F  # rows 1..2, columns 2..3
    np.testing.assert_array_equal(A.cutout(images, 0, np.array([[2, 3]])), images)
    pixels = np.array([0, 100, 127, 128, 250], np.uint8).reshape(1, 1, 5, 1)
    np.testing.assert_array_equal(A.solarize_add(pixels, 30)[0, 0, :, 0], [30, 130, 157, 128, 250])
    np.testing.assert_array_equal(A.solarize(pixels, 128)[0, 0, :, 0], [0, 100, 127, 127, 5])
    np.testing.assert_array_equal(A.posterize(pixels, 2)[0, 0, :, 0], [0, 64, 64, 128, 192])


# ----------------------------------------------------------------------------------------------------------------
# The official level-to-argument mapping


def test_level_to_argument_mapping() -> None:
    assert [A.solarize_threshold(m) for m in (0, 5, 9, 10, 15, 20)] == [0, 128, 230, 0, 128, 0]  # as uint8
    assert [A.posterize_bits(m) for m in (0, 2.5, 5, 9, 10, 15, 20, 25, 30)] == [1, 1, 2, 3, 4, 6, 8, 1, 1]
    assert A.enhance_factor(5) == 1.0 and A.enhance_factor(0) == pytest.approx(0.1)
    assert A.enhance_factor(10) == pytest.approx(1.9) and A.enhance_factor(15) == pytest.approx(2.8)
    assert len(A.BIG_VISION_OPS) == 16 and len(A.PAPER_OPS) == 14 and "Identity" not in A.BIG_VISION_OPS


def _one_op(images: np.ndarray, name: str, magnitude: float, sign: float = 1.0, seed: int = 0) -> np.ndarray:
    draws = A.draw_randaugment(np.random.default_rng(seed), len(images), 1, magnitude, ops=[name])
    draws["sign"][:] = sign
    return A.apply_randaugment(images, draws)


def test_translate_and_rotate_magnitudes() -> None:
    images = _images(8, shape=(2, 32, 32, 3))
    # M 10 on 32 px: 100 * 32 / 224 = 14.29 pixels -> output x takes input x + 14 (rounded)
    moved = _one_op(images, "TranslateX", 10)
    np.testing.assert_array_equal(moved[:, :, :18], images[:, :, 14:])
    assert (moved[:, :, 18:] == F).all()
    back = _one_op(images, "TranslateY", 10, sign=-1.0)
    np.testing.assert_array_equal(back[:, 14:], images[:, :18])
    big = _images(9, shape=(1, 224, 224, 3))  # at 224 px the official pixel count: M 1 -> 10 pixels
    np.testing.assert_array_equal(_one_op(big, "TranslateX", 1)[:, :, :214], big[:, :, 10:])
    np.testing.assert_array_equal(_one_op(images, "Rotate", 30), np.rot90(images, 1, axes=(1, 2)))  # 30 M/10 deg
    np.testing.assert_array_equal(_one_op(images, "Solarize", 15), A.solarize(images, 128))
    np.testing.assert_array_equal(_one_op(images, "Posterize", 15), A.posterize(images, 6))


@pytest.mark.parametrize("name", ["Identity", "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
                                  "SolarizeAdd"])
def test_magnitude_zero_is_identity_where_it_should_be(name: str) -> None:
    images = _images(10)
    for sign in (1.0, -1.0):
        np.testing.assert_array_equal(_one_op(images, name, 0, sign), images)


def test_magnitude_zero_is_not_identity_in_the_official_mapping() -> None:
    images = _images(11)
    np.testing.assert_array_equal(_one_op(images, "Solarize", 0), 255 - images)  # threshold 0: all inverted
    np.testing.assert_array_equal(_one_op(images, "Posterize", 0), A.posterize(images, 1))
    np.testing.assert_array_equal(_one_op(images, "Brightness", 0), A.brightness(images, 0.1))
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):  # factor 1 at M 5
        np.testing.assert_array_equal(_one_op(images, name, 5), images)


def test_num_ops_zero_is_identity() -> None:
    images = _images(12)
    for ops in ("big_vision", "paper"):
        out = A.randaugment(images, np.random.default_rng(0), 0, 30, ops=ops)
        np.testing.assert_array_equal(out, images)
        assert out is not images


# ----------------------------------------------------------------------------------------------------------------
# RandAugment on batches: shapes, determinism, rows


@pytest.mark.parametrize("ops", ["big_vision", "paper"])
def test_randaugment_shape_dtype_determinism(ops: str) -> None:
    images = _images(13, shape=(32, 12, 12, 3))
    a = A.randaugment(images, np.random.default_rng(5), 2, 15, ops=ops)
    b = A.randaugment(images, np.random.default_rng(5), 2, 15, ops=ops)
    c = A.randaugment(images, np.random.default_rng(6), 2, 15, ops=ops)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, images)
    np.testing.assert_array_equal(images, _images(13, shape=(32, 12, 12, 3)))  # the input is untouched


@pytest.mark.parametrize("channels", [3, 1])
def test_randaugment_rows_equal_the_whole_batch(channels: int) -> None:
    images = _images(14, shape=(48, 10, 10, channels))
    draws = A.draw_randaugment(np.random.default_rng(1), len(images), 3, 12)
    assert set(draws["choice"].ravel()) == set(range(16))  # every operation is exercised
    whole = A.apply_randaugment(images, draws)
    for rows in (slice(0, 17), slice(17, 48), np.array([40, 3, 7, 3]), np.arange(48)[::5]):
        np.testing.assert_array_equal(A.apply_randaugment(images[rows], draws, rows), whole[rows])


def test_randaugment_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        A.randaugment(np.zeros((2, 4, 4, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        A.draw_randaugment(np.random.default_rng(0), 2, 2, 9, ops=["Blur"])
    with pytest.raises(ValueError, match="ops must be"):
        A.draw_randaugment(np.random.default_rng(0), 2, 2, 9, ops="timm")
    draws = A.draw_randaugment(np.random.default_rng(0), 4, 2, 9)
    with pytest.raises(ValueError, match="rows select"):
        A.apply_randaugment(_images(0, shape=(3, 4, 4, 3)), draws)


# ----------------------------------------------------------------------------------------------------------------
# CutMix


def test_cutmix_lam_is_the_pasted_area() -> None:
    own, partners = np.zeros((8, 32, 32, 3), np.uint8), np.ones((8, 32, 32, 3), np.uint8)
    for seed in range(20):
        draws = A.draw_cutmix(np.random.default_rng(seed), 8, alpha=1.0)
        mixed, lam = A.apply_cutmix(own, partners, draws)
        assert mixed.dtype == np.uint8 and mixed.shape == own.shape
        assert lam == 1.0 - mixed[..., 0].mean(axis=(1, 2))[0] and (mixed[..., 0].mean(axis=(1, 2)) == 1 - lam).all()
    draws = {"apply": True, "lam": 0.5, "centre": np.array([0.0, 0.0]), "partner": np.arange(8)}
    # sides int(32 sqrt(0.5)) = 22, centred at (0, 0): clipped to 11 x 11 -> lam 1 - 121/1024, not the drawn 0.5
    assert A.cutmix_box(draws, 32, 32) == (0, 11, 0, 11)
    assert A.apply_cutmix(own, partners, draws)[1] == 1.0 - 121 / 1024


def test_cutmix_labels_and_rows() -> None:
    images, labels = _images(15, shape=(16, 8, 8, 3)), np.arange(16) % 10
    mixed, own, theirs, lam = A.cutmix(images, labels, 1.0, np.random.default_rng(3))
    draws = A.draw_cutmix(np.random.default_rng(3), 16, 1.0)
    np.testing.assert_array_equal(own, labels)
    np.testing.assert_array_equal(theirs, labels[draws["partner"]])
    targets = lam * np.eye(10)[own] + (1 - lam) * np.eye(10)[theirs]
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    partner = draws["partner"]
    for rows in (slice(0, 5), slice(5, 16), np.array([9, 2])):  # each rank: its rows and their partners
        part, part_lam = A.apply_cutmix(images[rows], images[partner[rows]], draws)
        np.testing.assert_array_equal(part, mixed[rows])
        assert part_lam == lam


def test_cutmix_off_and_bad_alpha() -> None:
    images = _images(16)
    draws = A.draw_cutmix(np.random.default_rng(0), 4, 1.0, prob=0.0)
    mixed, lam = A.apply_cutmix(images, images[::-1], draws)
    np.testing.assert_array_equal(mixed, images)
    assert lam == 1.0
    with pytest.raises(ValueError, match="alpha"):
        A.draw_cutmix(np.random.default_rng(0), 4, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Random erasing


def test_fill_values() -> None:
    np.testing.assert_array_equal(A.fill_values(None, 3), A.CIFAR10_MEAN_PIXEL)
    np.testing.assert_array_equal(A.fill_values(None, 1), [121])
    np.testing.assert_array_equal(A.fill_values(7, 2), [7, 7])
    with pytest.raises(ValueError, match="fill colour"):
        A.fill_values((1, 2, 3), 1)
    grey = A.random_erasing(np.zeros((8, 6, 6, 1), np.uint8), np.random.default_rng(0), 1.0)  # one channel
    assert set(np.unique(grey)) == {0, 121}
    moved = A.translate_x(np.zeros((1, 3, 3, 2), np.uint8), 1.0, fill=(5, 6))
    np.testing.assert_array_equal(moved[0, :, 2], [[5, 6]] * 3)


def test_random_erasing() -> None:
    images = np.zeros((64, 32, 32, 3), np.uint8)
    draws = A.draw_random_erasing(np.random.default_rng(2), 64, prob=1.0, fill=(1, 2, 3))
    out = A.apply_random_erasing(images, draws)
    assert out.dtype == np.uint8 and out.shape == images.shape
    erased = (out != 0).any(axis=-1)
    area = erased.mean(axis=(1, 2))
    assert (area > 0.01).all() and (area < 0.45).all()  # areas 0.02..0.4, after rounding the sides
    np.testing.assert_array_equal(out[erased], np.broadcast_to([1, 2, 3], (int(erased.sum()), 3)))
    boxes = A.erasing_boxes(draws, 32, 32)
    np.testing.assert_array_equal(area, (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / 1024)
    for rows in (slice(0, 30), np.array([63, 0, 5])):
        np.testing.assert_array_equal(A.apply_random_erasing(images[rows], draws, rows), out[rows])
    none = A.draw_random_erasing(np.random.default_rng(2), 64, prob=0.0)
    np.testing.assert_array_equal(A.apply_random_erasing(images, none), images)
    half = A.random_erasing(_images(17, shape=(200, 8, 8, 3)), np.random.default_rng(4), 0.5)
    again = A.random_erasing(_images(17, shape=(200, 8, 8, 3)), np.random.default_rng(4), 0.5)
    np.testing.assert_array_equal(half, again)


# ----------------------------------------------------------------------------------------------------------------
# The benchmark entry point


def test_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tinymixer.tools import bench_augment

    assert bench_augment.main(["--bench", "--batch-size", "4", "--repeats", "1", "--step", "none"]) == 0
    out = capsys.readouterr().out
    assert "RandAugment(2, 15)" in out and "CutMix" in out and "images/s" in out
