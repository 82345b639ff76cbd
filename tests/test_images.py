"""tinymixer.data.images: pictures of every common kind read as uint8 RGB with the right pixels, the official resize
(tf.image.resize's bilinear, checked against TensorFlow's documented output, Pillow and a plain formula), folders
in the ImageFolder convention, and the shipped ImageNet-1k class names. Tiny images made with Pillow here."""

from __future__ import annotations

import configparser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinymixer.data import DataError, load_folder
from tinymixer.data.images import (
    bilinear_resize,
    image_files,
    image_folder_to_cifar,
    imagenet1k_class_names,
    list_image_folder,
    load_image,
    load_image_folder,
    load_images,
    main,
    read_class_names,
    read_image,
    resize_image,
)

ROOT = Path(__file__).resolve().parents[1]
PATTERN = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # 3 rows x 4 columns, every pixel different


def save(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading


def test_rgb_png_reads_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    got = read_image(save(tmp_path, "a.png", Image.fromarray(rgb)))
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, rgb)


def test_grey_and_black_and_white_become_rgb(tmp_path):
    got = read_image(save(tmp_path, "grey.png", Image.fromarray(PATTERN)))
    assert got.shape == (3, 4, 3)
    np.testing.assert_array_equal(got, np.repeat(PATTERN[..., None], 3, axis=2))
    bits = Image.fromarray(PATTERN > 100).convert("1")
    got = read_image(save(tmp_path, "bits.png", bits))
    np.testing.assert_array_equal(got[..., 0], np.where(PATTERN > 100, 255, 0))
    assert read_image(save(tmp_path, "grey2.png", Image.fromarray(PATTERN)), channels=1).shape == (3, 4, 1)


def test_16_bit_keeps_the_high_byte(tmp_path):
    """Pillow's own convert("L") would clip every value above 255 to white; the high byte keeps the picture."""
    wide = PATTERN.astype(np.uint16) * 257  # v * 257 is v in 16 bits: 255 -> 65535
    wide[0, 0] = 65535
    path = save(tmp_path, "deep.png", Image.fromarray(wide))
    assert Image.open(path).mode.startswith("I")
    expected = PATTERN.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(read_image(path), np.repeat(expected[..., None], 3, axis=2))


def test_alpha_is_composited_on_white_or_dropped(tmp_path):
    colour = np.array([200, 100, 0], dtype=np.uint8)
    alpha = np.array([[0, 128, 255]], dtype=np.uint8)  # transparent, half, opaque
    rgba = np.concatenate([np.broadcast_to(colour, (1, 3, 3)), alpha[..., None]], axis=2)
    path = save(tmp_path, "a.png", Image.fromarray(rgba))
    a = alpha[0, :, None].astype(np.float64)
    expected = np.round((colour[None, :] * a + 255 * (255 - a)) / 255)  # [[255]*3, [227, 177, 127], colour]
    got = read_image(path)
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[0, 0], [255, 255, 255])  # fully transparent: the white page
    np.testing.assert_array_equal(got[0, 2], colour)  # opaque: the colour itself
    np.testing.assert_array_equal(read_image(path, background=None)[0], np.broadcast_to(colour, (3, 3)))
    np.testing.assert_array_equal(read_image(path, background=(0, 0, 0))[0, 0], [0, 0, 0])
    la = Image.fromarray(np.stack([PATTERN, np.zeros_like(PATTERN)], axis=2), mode="LA")
    np.testing.assert_array_equal(read_image(save(tmp_path, "la.png", la)), 255)  # grey, fully transparent


def test_palette_colours_and_transparent_index(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]  # index 0 red, 1 green, 2 blue
    image = Image.new("P", (3, 1))
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.putdata([0, 1, 2])
    got = read_image(save(tmp_path, "p.png", image))
    np.testing.assert_array_equal(got[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    got = read_image(save(tmp_path, "pt.png", image, transparency=1))  # green is the transparent colour
    np.testing.assert_array_equal(got[0], [[255, 0, 0], [255, 255, 255], [0, 0, 255]])


@pytest.mark.parametrize("orientation, upright", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),  # stored upside down
    (6, lambda a: np.rot90(a, -1)),  # to be turned 90 degrees clockwise for display
    (8, lambda a: np.rot90(a, 1)),  # 90 degrees counter-clockwise
    (2, lambda a: a[:, ::-1]),  # mirrored
])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    image = Image.fromarray(PATTERN)
    exif = image.getexif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    got = read_image(save(tmp_path, "photo.png", image, exif=exif))
    np.testing.assert_array_equal(got[..., 0], upright(PATTERN))


def test_unreadable_files_are_a_clear_error_naming_them(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(DataError, match="notes.txt.*not an image"):
        read_image(text)
    whole = save(tmp_path, "cut.png", Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                                                                          dtype=np.uint8)))
    cut = tmp_path / "half.png"
    cut.write_bytes(whole.read_bytes()[:1000])
    with pytest.raises(DataError, match="half.png.*damaged or truncated"):
        read_image(cut)
    with pytest.raises(DataError, match="missing.jpg: no such file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="is a folder"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Resizing


def reference_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """tf.image.resize's bilinear (half-pixel centres, no antialiasing), pixel by pixel in float64."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for i in range(out_h):
        y = min(max((i + 0.5) * in_h / out_h - 0.5, 0), in_h - 1)
        y0, y1 = int(np.floor(y)), min(int(np.floor(y)) + 1, in_h - 1)
        for j in range(out_w):
            x = min(max((j + 0.5) * in_w / out_w - 0.5, 0), in_w - 1)
            x0, x1 = int(np.floor(x)), min(int(np.floor(x)) + 1, in_w - 1)
            top = image[y0, x0] * (1 - (x - x0)) + image[y0, x1] * (x - x0)
            bottom = image[y1, x0] * (1 - (x - x0)) + image[y1, x1] * (x - x0)
            out[i, j] = top * (1 - (y - y0)) + bottom * (y - y0)
    return out


def test_bilinear_resize_gives_tensorflows_documented_output():
    """The example of tf.image.resize's docstring: a 5x5 identity resized to 3x5."""
    got = bilinear_resize(np.eye(5, dtype=np.float32)[..., None], (3, 5))[..., 0]
    expected = [[0.6666667, 0.3333333, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0.3333335, 0.6666665]]
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert got.dtype == np.float32


@pytest.mark.parametrize("out_h, out_w", [(4, 3), (16, 12), (7, 11), (1, 1)])
def test_bilinear_resize_matches_the_formula_up_and_down(out_h, out_w):
    image = np.random.default_rng(1).integers(0, 256, (7, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(bilinear_resize(image, (out_h, out_w)), reference_resize(image, out_h, out_w),
                               atol=1e-3)


def test_upscaling_matches_pillows_bilinear_but_downscaling_does_not_antialias():
    """Pillow's BILINEAR equals the official resize when enlarging; when shrinking Pillow averages over the whole
    footprint (antialiasing) and the official resize, like tf.image.resize's default, does not."""
    grey = np.random.default_rng(2).uniform(0, 255, (6, 5)).astype(np.float32)
    pillow = np.asarray(Image.fromarray(grey, mode="F").resize((13, 17), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(bilinear_resize(grey[..., None], (17, 13))[..., 0], pillow, atol=1e-3)
    stripes = np.tile(np.array([0, 0, 0, 255], dtype=np.float32), 4)[None, :].repeat(2, axis=0)  # 2 x 16
    ours = bilinear_resize(stripes[..., None], (2, 4))[0, :, 0]
    theirs = np.asarray(Image.fromarray(stripes, mode="F").resize((4, 2), Image.Resampling.BILINEAR))[0]
    np.testing.assert_allclose(ours, [0, 0, 0, 0])  # samples fall between the 0-pixels: the stripes vanish
    assert theirs.min() > 10  # Pillow keeps their average


def test_halving_averages_two_by_two_blocks():
    image = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    blocks = image.reshape(2, 2, 3, 2, 3).astype(np.float64).mean(axis=(1, 3))
    got = resize_image(image, (2, 3))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
    assert np.abs(got - blocks).max() <= 0.5 + 1e-6  # rounded to the nearest integer


def test_resize_default_squeezes_and_crop_keeps_the_aspect_ratio():
    wide = np.random.default_rng(4).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    assert resize_image(wide, 10).shape == (10, 10, 3)
    np.testing.assert_array_equal(resize_image(wide, (20, 40)), wide)  # same size: unchanged
    np.testing.assert_array_equal(resize_image(wide, 10, crop=True), resize_image(wide, (10, 20))[:, 5:15])
    tall = wide.transpose(1, 0, 2)
    np.testing.assert_array_equal(resize_image(tall, 10, crop=True), resize_image(tall, (20, 10))[5:15])


def test_load_image_and_load_images(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (12, 8, 3), dtype=np.uint8)
    path = save(tmp_path, "x.png", Image.fromarray(rgb))
    np.testing.assert_array_equal(load_image(path, (6, 4)), resize_image(rgb, (6, 4)))
    batch = load_images([path, path], 5)
    assert batch.shape == (2, 5, 5, 3) and batch.dtype == np.uint8
    assert load_images([path], 5, channels=1).shape == (1, 5, 5, 1)


# ----------------------------------------------------------------------------------------------------------------
# Folders


def make_tree(root: Path, counts: dict[str, int], size=(6, 5)) -> dict[Path, int]:
    """ROOT/<class>/img<i>.png, each image filled with a value that encodes its class: {path: class value}."""
    values = {}
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / name / f"img{i}.{'png' if i % 2 else 'JPG'}"
            Image.fromarray(np.full(size + (3,), 40 * c, dtype=np.uint8)).save(path, format="PNG")
            values[path] = 40 * c
    return values


def test_image_files_skips_other_and_hidden_files(tmp_path):
    make_tree(tmp_path, {"a": 2})
    (tmp_path / "a" / "readme.txt").write_text("x")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    assert [p.name for p in image_files(tmp_path / "a")] == ["img0.JPG", "img1.png"]


def test_list_image_folder_sorts_classes_and_labels(tmp_path):
    make_tree(tmp_path, {"zebra": 2, "ant": 3, "Moth": 1})
    (tmp_path / "ant" / "more").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "ant" / "more" / "deep.png")
    paths, labels, names = list_image_folder(tmp_path)
    assert names == ["Moth", "ant", "zebra"]  # sorted by name, as torchvision's ImageFolder does
    assert labels.tolist() == [0, 1, 1, 1, 1, 2, 2]
    assert [p.parent.name for p in paths] == ["Moth", "ant", "ant", "ant", "more", "zebra", "zebra"]


def test_load_image_folder_random_hold_out(tmp_path):
    values = make_tree(tmp_path, {"a": 4, "b": 3, "c": 3})
    data = load_image_folder(tmp_path, 4, test_fraction=0.3, seed=0)
    assert (len(data.train_labels), len(data.test_labels)) == (7, 3)
    assert data.class_names == ["a", "b", "c"] and data.image_shape == (4, 4, 3)
    assert data.train_images.dtype == np.uint8
    for images, labels in [(data.train_images, data.train_labels), (data.test_images, data.test_labels)]:
        np.testing.assert_array_equal(images[:, 0, 0, 0], 40 * labels)  # every image carries its class
    again = load_image_folder(tmp_path, 4, test_fraction=0.3, seed=0)
    np.testing.assert_array_equal(again.test_labels, data.test_labels)
    assert sorted(values.values()) == sorted(np.concatenate([data.train_images, data.test_images])[:, 0, 0, 0])


def test_load_image_folder_train_and_test_subfolders(tmp_path):
    make_tree(tmp_path / "train", {"cat": 2, "dog": 3})
    make_tree(tmp_path / "test", {"dog": 1})  # a class may be missing from the test set
    data = load_image_folder(tmp_path, 3)
    assert data.class_names == ["cat", "dog"]
    assert data.train_labels.tolist() == [0, 0, 1, 1, 1] and data.test_labels.tolist() == [1]
    make_tree(tmp_path / "test", {"cow": 1})
    with pytest.raises(DataError, match="not among the 2 classes: cow"):
        load_image_folder(tmp_path, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        list_image_folder(tmp_path / "nothing")
    Image.new("RGB", (2, 2)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class subfolders.*holds 1 images directly"):
        list_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    make_tree(tmp_path, {"full": 2})
    with pytest.raises(DataError, match="without images.*empty"):
        list_image_folder(tmp_path)
    (tmp_path / "full" / "img0.JPG").write_text("garbage")
    (tmp_path / "empty").rmdir()
    with pytest.raises(DataError, match="img0.JPG"):
        load_image_folder(tmp_path, 4)


def test_image_folder_to_cifar_trains_where_cifar10_reads(tmp_path):
    make_tree(tmp_path / "photos", {"a": 3, "b": 2}, size=(9, 7))
    written = image_folder_to_cifar(tmp_path / "photos", tmp_path / "data", 8, test_fraction=0.4)
    back = load_folder(tmp_path / "data")
    assert back.class_names == ["a", "b"] and back.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(back.train_images, written.train_images)
    np.testing.assert_array_equal(back.test_labels, written.test_labels)
    with pytest.raises(DataError, match="already holds a data set"):
        image_folder_to_cifar(tmp_path / "photos", tmp_path / "data", 8)


def test_command_line(tmp_path, capsys):
    make_tree(tmp_path / "photos", {"a": 2, "b": 2})
    assert main([str(tmp_path / "photos"), str(tmp_path / "out"), "--size", "4", "--grey"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_folder(tmp_path / "out").image_shape == (4, 4, 1)
    photos, out = str(tmp_path / "photos"), str(tmp_path / "out3")
    for argv, says in (([str(tmp_path / "nowhere"), out], "python -m tinymixer.data.images: error: "),
                       ([photos, out, "--test-fraction", "1.5"], "--test-fraction"),
                       ([photos, out, "--size", "0"], "--size")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and says in err and "test_fraction" not in err, err


# ----------------------------------------------------------------------------------------------------------------
# Class names


def test_imagenet1k_class_names_are_the_standard_list():
    names = imagenet1k_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(name and name == name.strip() for name in names)
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[999] == "toilet tissue"
    assert (names[134], names[517]) == ("crane bird", "crane")  # the bird and the machine
    assert (names[638], names[639]) == ("maillot", "maillot tank suit")
    assert (names[281], names[207], names[409]) == ("tabby", "golden retriever", "analog clock")


def test_class_names_file_is_package_data():
    assert resources.files("tinymixer").joinpath("imagenet1k_classes.txt").is_file()
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "imagenet1k_classes.txt" in config["options.package_data"]["tinymixer"]


def test_read_class_names(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\r\n dog \nbird\n\n")
    assert read_class_names(path) == ["cat", "dog", "bird"]
    path.write_text("cat\n\nbird\n")
    with pytest.raises(DataError, match="line 2 is empty"):
        read_class_names(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="no class names"):
        read_class_names(path)
    with pytest.raises(DataError, match="cannot read class names"):
        read_class_names(tmp_path / "none.txt")
