"""The CIFAR loader on archives made here in the exact CIFAR-10 format, served from 127.0.0.1 (no internet)."""

from __future__ import annotations

import http.server
import pickle
import threading
from functools import partial

import numpy as np
import pytest
from helpers import fake_cifar, make_cifar_archive

from tinymixer import data as D
from tinymixer.data import augment as A


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (www folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_save_and_load_folder_roundtrip(tmp_path):
    dataset = fake_cifar(num_train=50, num_test=20)
    D.save_folder(tmp_path / "d", dataset, train_batches=3)
    loaded = D.load_folder(tmp_path / "d")
    np.testing.assert_array_equal(loaded.train_images, dataset.train_images)
    np.testing.assert_array_equal(loaded.train_labels, dataset.train_labels)
    np.testing.assert_array_equal(loaded.test_images, dataset.test_images)
    assert loaded.class_names == dataset.class_names and loaded.image_shape == (32, 32, 3)


def test_saving_over_a_larger_data_set_leaves_none_of_it_and_few_images_still_save(tmp_path):
    D.save_folder(tmp_path / "d", fake_cifar(num_train=50, num_test=20), train_batches=10)
    smaller = fake_cifar(num_train=20, num_test=5, seed=1)
    D.save_folder(tmp_path / "d", smaller, train_batches=5)  # data_batch_6..10 of the first would stay behind
    loaded = D.load_folder(tmp_path / "d")
    np.testing.assert_array_equal(loaded.train_images, smaller.train_images)
    assert sorted(p.name for p in (tmp_path / "d").glob("data_batch_*")) == [f"data_batch_{i}" for i in range(1, 6)]
    few = fake_cifar(num_train=3, num_test=2)
    D.save_folder(tmp_path / "few", few)  # 3 images, 5 batches asked: 3 batches, and the test batch
    np.testing.assert_array_equal(D.load_folder(tmp_path / "few").train_labels, few.train_labels)
    with pytest.raises(ValueError, match="train_batches must be a whole number, at least 1"):
        D.save_folder(tmp_path / "zero", few, train_batches=0)


def test_reads_the_real_cifar_pixel_layout(tmp_path):
    """Real CIFAR rows hold the red plane, then green, then blue (1024 bytes each), and byte-string keys."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[1] = 99  # red, image row 0, column 1
    for name in ["data_batch_1", "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": row[None, :], b"labels": [7], b"batch_label": b"x"}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    loaded = D.load_folder(folder)
    assert loaded.train_images.shape == (1, 32, 32, 3)
    assert tuple(loaded.train_images[0, 0, 0]) == (10, 20, 30) and loaded.train_images[0, 0, 1, 0] == 99
    assert loaded.train_labels.tolist() == [7] and loaded.num_classes == 10


def test_download_verify_extract_and_reuse_cache(tmp_path, served):
    www, url = served
    archive, md5 = make_cifar_archive(www)
    cache = tmp_path / "cache"
    folder = D.ensure_cifar10(cache, url=f"{url}/{archive.name}", md5=md5, progress=False)
    assert folder == cache / D.FOLDER_NAME and D.load_folder(folder).train_images.shape == (600, 32, 32, 3)
    assert (cache / D.ARCHIVE_NAME).exists() and not list(cache.glob("*.part"))
    archive.unlink()  # the server no longer has it: the cache must be enough
    assert D.ensure_cifar10(cache, url=f"{url}/{archive.name}", md5=md5, download_ok=False) == folder


def test_cached_archive_is_extracted_without_network(tmp_path):
    archive, md5 = make_cifar_archive(tmp_path)
    folder = D.ensure_cifar10(tmp_path, url="http://127.0.0.1:9/none", md5=md5, download_ok=False)
    assert (folder / "test_batch").exists()


def test_download_with_wrong_md5_leaves_nothing(tmp_path, served):
    www, url = served
    archive, _ = make_cifar_archive(www)
    cache = tmp_path / "cache"
    with pytest.raises(D.DataError, match="MD5"):
        D.ensure_cifar10(cache, url=f"{url}/{archive.name}", md5="0" * 32, progress=False)
    assert list(cache.iterdir()) == []  # no file that looks complete, no leftover part-file


def test_truncated_download_is_detected(tmp_path):
    """A server that promises more bytes than it sends: the download must fail and leave nothing behind."""
    payload = b"x" * 1000

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(payload)  # then close the connection early

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        with pytest.raises(D.DataError, match=r"download failed|stopped after"):
            D.ensure_cifar10(tmp_path, url=url, md5="0" * 32, progress=False)
        assert list(tmp_path.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


def test_corrupt_cached_archive_is_fetched_again(tmp_path, served):
    www, url = served
    archive, md5 = make_cifar_archive(www)
    (tmp_path / D.ARCHIVE_NAME).write_bytes(b"garbage from an old interrupted copy")
    folder = D.ensure_cifar10(tmp_path, url=f"{url}/{archive.name}", md5=md5, progress=False)
    assert D.md5sum(tmp_path / D.ARCHIVE_NAME) == md5 and (folder / "batches.meta").exists()


def test_corrupt_cached_archive_without_network_is_reported(tmp_path):
    (tmp_path / D.ARCHIVE_NAME).write_bytes(b"garbage")
    with pytest.raises(D.DataError, match="corrupt"):
        D.ensure_cifar10(tmp_path, download_ok=False)


def test_no_data_no_network_says_what_to_do(tmp_path):
    with pytest.raises(D.DataError, match=r"cifar-10-python.tar.gz.*into " + str(tmp_path)):
        D.ensure_cifar10(tmp_path, url="http://127.0.0.1:9/unreachable.tar.gz", progress=False)


def test_augment_crops_and_flips(rng):
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    same = A.augment(images, rng, crop_padding=0, flip=False)
    np.testing.assert_array_equal(same, images)
    flipped = [A.augment(images, np.random.default_rng(s), crop_padding=0) for s in range(20)]
    assert any(np.array_equal(f[0], images[0, :, ::-1]) for f in flipped)
    cropped = A.augment(images, rng, crop_padding=2, flip=False)
    assert cropped.shape == images.shape and cropped.dtype == np.uint8
    for b in range(2):  # every crop is a shifted window of the zero-padded image
        padded = np.pad(images[b], ((2, 2), (2, 2), (0, 0)))
        assert any(np.array_equal(cropped[b], padded[i:i + 4, j:j + 4]) for i in range(5) for j in range(5))


def test_normalize_and_mixup(rng):
    x = np.array([[[[0, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(D.normalize(x), [[[[-1.0, 1.0]]]])
    assert D.normalize(x).dtype == np.float32
    images = D.normalize(fake_cifar(8, 1).train_images)
    labels = np.arange(8)
    mixed, a, partner, lam = A.mixup(images, labels, 0.4, rng)  # labels = indices, so partner = the permutation
    assert 0 <= lam <= 1 and mixed.dtype == np.float32 and np.array_equal(a, labels)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[partner], rtol=1e-5, atol=1e-6)


def test_validation_split_and_batches():
    dataset = fake_cifar(100, 10)
    split = dataset.split_validation(20)
    assert len(split.train_labels) == 80 and len(split.test_labels) == 20
    seen = np.concatenate(list(D.batches(10, 3, np.random.default_rng(0))))
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b) for b in D.batches(10, 3, None, drop_last=True)] == [3, 3, 3]


def test_resize_batch_matches_pillows_bilinear_on_upscaling_and_keeps_constant_images():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    resized = D.resize_batch(images, (24, 18))
    assert resized.shape == (3, 24, 18, 3) and resized.dtype == np.uint8
    for image, mine in zip(images, resized, strict=True):  # Pillow's bilinear: the same half-pixel sampling
        theirs = np.asarray(Image.fromarray(image).resize((18, 24), Image.BILINEAR))
        assert np.abs(mine.astype(int) - theirs).max() <= 1
    flat = np.full((1, 5, 7, 1), 77, np.uint8)
    assert (D.resize_batch(flat, (32, 32)) == 77).all()
    assert D.resize_batch(images, (8, 6)) is images


# --- subsets that keep every class (--limit-train / --limit-test) ------------------------------------------------


def test_a_limited_subset_keeps_every_class_in_proportion_even_on_sorted_data():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 100, 200])  # sorted by class, uneven
    keep = D.class_balanced_subset(labels, 256, seed=0)
    counts = np.bincount(labels[keep], minlength=10)
    expected = 256 * np.bincount(labels) / len(labels)
    assert len(keep) == 256 and len(set(keep.tolist())) == 256 and np.all(np.diff(keep) > 0)
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)  # the first 256 would be classes 0..5 only
    again, other = D.class_balanced_subset(labels, 256, seed=0), D.class_balanced_subset(labels, 256, seed=1)
    assert np.array_equal(keep, again) and not np.array_equal(keep, other)  # seeded
    assert D.class_balanced_subset(labels, None) == slice(None) and D.class_balanced_subset(labels, 10**6) == slice(
        None)
    dataset = fake_cifar(num_train=600, num_test=30)
    small = dataset.limited(train=100, test=None, seed=3)
    assert len(small.train_labels) == 100 and len(small.test_labels) == 30
    assert set(small.train_labels.tolist()) == set(dataset.train_labels.tolist())


# --- python -m tinymixer.data checks that images and labels pair up -----------------------------------------------


@pytest.mark.parametrize(("num_images", "num_labels"), [(100, 50), (50, 100)])
def test_the_converter_refuses_images_and_labels_of_different_lengths(tmp_path, capsys, num_images, num_labels):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (num_images, 6, 6)),
             labels=rng.integers(0, 3, num_labels))
    assert D.main([str(tmp_path / "a.npz"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{num_images} images but {num_labels} labels" in err, err
    assert not (tmp_path / "out").exists()
    np.savez(tmp_path / "b.npz", x_train=rng.integers(0, 256, (num_images, 6, 6)), y_train=np.zeros(num_labels, int),
             x_test=rng.integers(0, 256, (5, 6, 6)), y_test=np.zeros(5, int))
    assert D.main([str(tmp_path / "b.npz"), str(tmp_path / "out")]) == 2
    assert "training labels must be one class index per image" in capsys.readouterr().err


def test_synthetic_motifs_differ_only_in_the_arrangement_of_five_bright_pixels():
    from tinymixer.data import MOTIF_NAMES, synthetic_motifs

    images, labels = synthetic_motifs(400, size=12, seed=3)
    assert images.shape == (400, 12, 12, 1) and images.dtype == np.uint8 and set(labels) == {0, 1}
    assert ((images == 255).sum(axis=(1, 2, 3)) == 5).all()  # one motif each, five pixels, on noise below 120
    assert (images[images != 255] < 120).all()
    for label, name in enumerate(MOTIF_NAMES):
        rows, cols = np.nonzero(images[np.flatnonzero(labels == label)[0], ..., 0] == 255)
        pattern = {(r - rows.min(), c - cols.min()) for r, c in zip(rows, cols, strict=True)}
        assert pattern == set(D.synthetic.MOTIFS[name])
    corners = [tuple(np.argwhere(image[..., 0] == 255).min(axis=0)) for image in images]
    assert len(set(corners)) > 50  # anywhere in the image, not in a few places
    again, _ = synthetic_motifs(400, size=12, seed=3)
    assert np.array_equal(images, again)  # seeded


def test_limited_takes_whole_numbers_of_images():
    dataset = fake_cifar(num_train=20, num_test=10)
    assert len(dataset.limited(train=5).train_labels) == 5
    for wrong in (-3, 0, 2.5):
        with pytest.raises(ValueError, match="train must be a whole number of images, at least 1"):
            dataset.limited(train=wrong)  # -3 kept all but 3 before
