"""Few-shot linear evaluation: MlpMixer.features, the closed-form probe (values worked out by hand, primal = dual,
a third route through lstsq), the official draw of the shots, and examples/fewshot.py end to end."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import host_params, small_model

import tinymixer as tm
from tinymixer import chunks
from tinymixer.data import Dataset, save_folder
from tinymixer.transfer.fewshot import (
    BIAS_FEATURE,
    L2,
    STD_EPS,
    few_shot_accuracy,
    few_shot_evaluation,
    few_shot_rows,
    fit_linear_probe,
    mean_and_std,
    predict,
    ridge,
    sample_shots,
    signed_one_hot,
)

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fewshot_script", ROOT / "examples" / "fewshot.py")
fewshot_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fewshot_script)


# -- MlpMixer.features ----------------------------------------------------------------------------------------------

def test_features_are_the_pre_logits_the_head_maps_to_the_logits():
    model = small_model()  # float64, every parameter random (the head too)
    images = np.random.default_rng(0).standard_normal((5, 8, 8, 3))
    features = model.features(images)
    assert features.shape == (5, model.hidden_dim) and features.dtype == np.float64
    logits = model.forward(images, train=False)
    np.testing.assert_allclose(features @ model.params["head/kernel"] + model.params["head/bias"], logits,
                               rtol=1e-13, atol=1e-13)


def test_features_by_the_definition():
    """The last LayerNorm of the blocks' output, averaged over the tokens, computed here from the model's parts."""
    from tinymixer.nn.blocks import mixer_block_forward, subtree
    from tinymixer.nn.conv import stem_forward

    model = small_model()
    p = host_params(model)
    images = np.random.default_rng(1).standard_normal((3, 8, 8, 3))
    x, _ = stem_forward(images, p["stem/kernel"], p["stem/bias"])  # (B, S, C)
    for i in range(model.num_blocks):
        x, _ = mixer_block_forward(x, subtree(p, f"MixerBlock_{i}"), model.gelu, False)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    normed = (x - mu) / np.sqrt(var + 1e-6) * p["pre_head_layer_norm/scale"] + p["pre_head_layer_norm/bias"]
    np.testing.assert_allclose(model.features(images), normed.mean(axis=1), rtol=1e-10, atol=1e-12)


def test_features_keep_no_cache_and_shards_agree(monkeypatch):
    model = small_model()
    images = np.random.default_rng(2).standard_normal((8, 8, 8, 3))
    model.forward(images, train=True)
    one_shard = model.features(images)
    assert model._cache is None  # an evaluation pass: the training forward's caches are dropped
    with pytest.raises(RuntimeError, match="train=True"):
        model.backward(np.ones((8, model.num_classes)))
    monkeypatch.setattr(chunks, "MIN_SHARD", 4)
    monkeypatch.setenv(chunks.THREADS_ENV, "2")
    assert len(chunks.batch_shards(8)) == 2
    np.testing.assert_allclose(model.features(images), one_shard, rtol=1e-13, atol=1e-13)


def test_features_stay_float32():
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, dtype="float32")
    assert model.features(np.zeros((2, 16, 16, 3))).dtype == np.float32


# -- The probe: by hand, primal = dual, and a third route ------------------------------------------------------------

def test_ridge_by_hand_in_both_forms():
    """X = diag(1, 2), Y = [[1, -1], [-1, 1]], l2 = 1: X^T X + I = diag(2, 5), X^T Y = [[1, -1], [-2, 2]], so
    V = [[1/2, -1/2], [-2/5, 2/5]]; the dual X^T (X X^T + I)^{-1} Y gives the same."""
    x, y = np.diag([1.0, 2.0]), np.array([[1.0, -1.0], [-1.0, 1.0]])
    expected = np.array([[0.5, -0.5], [-0.4, 0.4]])
    for form in ("auto", "primal", "dual"):
        np.testing.assert_allclose(ridge(x, y, 1.0, form), expected, rtol=1e-15, atol=1e-15)


def test_signed_one_hot():
    np.testing.assert_array_equal(signed_one_hot(np.array([2, 0]), 3), [[-1, -1, 1], [1, -1, -1]])


def test_probe_with_whitening_and_bias_by_hand():
    """x = [0, 2] (one feature), labels 0, 1: mean 1, std 1 + 1e-5 = s, whitened z = -a, +a with a = 1/s, then
    Z = [[-a, 100], [a, 100]]: Z^T Z = diag(2a^2, 2e4) and Z^T Y = [[-2a, 2a], [0, 0]], so V = [[-g, g], [0, 0]]
    with g = 2a / (2a^2 + l2). On raw features: W = V[:1] / s = [[-c, c]], c = g / s, b = -(1/s) V[0] = [c, -c]."""
    s = 1.0 + STD_EPS
    a = 1.0 / s
    c = 2 * a / (2 * a * a + L2) / s
    w, b = fit_linear_probe(np.array([[0.0], [2.0]]), np.array([0, 1]), 2)
    np.testing.assert_allclose(w, [[-c, c]], rtol=1e-13)
    np.testing.assert_allclose(b, [c, -c], rtol=1e-13)
    np.testing.assert_array_equal(predict(np.array([[0.5], [1.5]]), w, b), [0, 1])


def test_bias_is_almost_unregularised_by_hand():
    """Features all zero, labels 0, 0, 1, no whitening: only the bias column (100) is left, and for class 0
    (targets 1, 1, -1) the ridge gives v = 100 * 1 / (3e4 + l2), so b = 100 v = 1e4 / (3e4 + l2): the
    unregularised mean target 1/3 shrunk by 3e4 / (3e4 + l2) only (0.967 for l2 = 1024)."""
    w, b = fit_linear_probe(np.zeros((3, 4)), np.array([0, 0, 1]), 2, whiten=False)
    expected = 1e4 / (3e4 + L2)
    np.testing.assert_allclose(b, [expected, -expected], rtol=1e-13)
    np.testing.assert_array_equal(w, 0.0)
    assert BIAS_FEATURE == 100.0 and L2 == 1024.0  # the official defaults


@pytest.mark.parametrize("n, d", [(6, 20), (40, 9)])  # fewer samples than features (dual), more (primal)
def test_primal_equals_dual(n, d):
    r = np.random.default_rng(n)
    x, y = r.standard_normal((n, d)), r.standard_normal((n, 3))
    for l2 in (1e-3, 1.0, L2):
        np.testing.assert_allclose(ridge(x, y, l2, "primal"), ridge(x, y, l2, "dual"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n, d", [(5, 12), (30, 4)])
def test_probe_equals_least_squares_on_the_stacked_system(n, d):
    """Ridge is plain least squares on [Z; sqrt(l2) I] V = [Y; 0]: solved by lstsq, whitened and augmented here,
    it must give the probe's scores on new features."""
    r = np.random.default_rng(d)
    x, labels, x_new = 3 + 2 * r.standard_normal((n, d)), np.arange(n) % 3, r.standard_normal((7, d))
    l2 = 10.0
    mean, std = x.mean(0), x.std(0) + STD_EPS
    z = np.hstack([(x - mean) / std, np.full((n, 1), 100.0)])  # (n, d + 1)
    stacked = np.vstack([z, np.sqrt(l2) * np.eye(d + 1)])
    targets = np.vstack([2.0 * np.eye(3)[labels] - 1.0, np.zeros((d + 1, 3))])
    v = np.linalg.lstsq(stacked, targets, rcond=None)[0]
    w, b = fit_linear_probe(x, labels, 3, l2)
    expected = np.hstack([(x_new - mean) / std, np.full((7, 1), 100.0)]) @ v
    np.testing.assert_allclose(x_new @ w + b, expected, rtol=1e-9, atol=1e-10)


def test_separable_data_with_tiny_l2_is_classified_perfectly():
    r = np.random.default_rng(3)
    centres = 5 * r.standard_normal((5, 50))
    labels = np.repeat(np.arange(5), 20)
    features = centres[labels] + 0.1 * r.standard_normal((100, 50))
    test_labels = np.repeat(np.arange(5), 10)
    test = centres[test_labels] + 0.1 * r.standard_normal((50, 50))
    for shots in (1, 5):
        assert few_shot_accuracy(features, labels, test, test_labels, shots, seed=0, l2=1e-6) == 1.0
    rows = sample_shots(labels, 5, seed=0, num_classes=5)  # 25 samples in 50 dimensions: the targets are met
    w, b = fit_linear_probe(features[rows], labels[rows], 5, l2=1e-8)
    np.testing.assert_allclose(features[rows] @ w + b, signed_one_hot(labels[rows], 5), atol=1e-6)


def test_bad_probe_input():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        ridge(np.eye(2), np.eye(2), 0.0)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        fit_linear_probe(np.eye(2), np.array([0, 2]), 2)


# -- The draw --------------------------------------------------------------------------------------------------------

def test_sample_shots_takes_exactly_shots_per_class_seeded_and_nested():
    labels = np.random.default_rng(0).integers(0, 4, 200)
    five = sample_shots(labels, 5, seed=7, num_classes=4)
    assert five.shape == (20,) and len(set(five)) == 20
    np.testing.assert_array_equal(labels[five], np.repeat(np.arange(4), 5))  # class 0's five first, ...
    np.testing.assert_array_equal(five, sample_shots(labels, 5, seed=7, num_classes=4))  # seeded
    assert not np.array_equal(five, sample_shots(labels, 5, seed=8, num_classes=4))
    assert set(sample_shots(labels, 1, seed=7, num_classes=4)) <= set(five)  # 1-shot among the 5-shot images
    rng = np.random.default_rng(7)  # the official draw, call for call
    official = np.concatenate([rng.permutation(np.where(labels == k)[0])[:5] for k in range(4)])
    np.testing.assert_array_equal(five, official)
    with pytest.raises(ValueError, match="class 3 has 0 training images, fewer than the 1 shots"):
        sample_shots(np.array([0, 1, 2]), 1, seed=0, num_classes=4)


def test_few_shot_reads_only_the_drawn_rows():
    r = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 30)
    features = r.standard_normal((90, 6)) + 3 * np.eye(3, 6)[labels]
    rows = few_shot_rows(labels, [1, 5], range(3), 3)
    poisoned = np.full_like(features, np.nan)
    poisoned[rows] = features[rows]  # what examples/fewshot.py computes: the drawn rows only
    results = few_shot_evaluation(poisoned, labels, features, labels, shots=(1, 5), seeds=3, num_classes=3)
    assert set(results) == {1, 5} and all(v.shape == (3,) for v in results.values())
    expected = few_shot_evaluation(features, labels, features, labels, shots=(1, 5), seeds=3, num_classes=3)
    for shots in (1, 5):
        np.testing.assert_array_equal(results[shots], expected[shots])
    mean, std = mean_and_std(np.array([0.5, 0.7]))
    assert mean == pytest.approx(0.6) and std == pytest.approx(np.sqrt(0.02))
    assert mean_and_std(np.array([0.4])) == (0.4, 0.0)


# -- examples/fewshot.py end to end ----------------------------------------------------------------------------------

COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])  # one mean colour per class


def colour_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """16x16 images of noise around their class's colour: easy for a linear probe on any reasonable features."""
    r = np.random.default_rng(seed)
    noisy = COLOURS[labels][:, None, None, :] + r.normal(0, 25, (len(labels), 16, 16, 3))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """A small randomly initialised Mixer saved in the official layout (parameters only, np.savez) for 8x8 images,
    and a CIFAR-layout folder of 16x16 images in 4 classes told apart by their colour."""
    root = tmp_path_factory.mktemp("fewshot")
    model = tm.MlpMixer(num_classes=5, num_blocks=2, patch_size=4, hidden_dim=16, tokens_mlp_dim=8,
                        channels_mlp_dim=32, image_size=8, seed=0)
    np.savez(root / "tiny.npz", **{name: tm.to_host(value) for name, value in model.params.items()})
    train_labels, test_labels = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 20)
    save_folder(root / "colours", Dataset(colour_images(train_labels, 0), train_labels, colour_images(test_labels, 1),
                                          test_labels, ["red", "green", "blue", "yellow"]))
    return root / "tiny.npz", root / "colours"


def test_script_end_to_end(tiny_files, capsys):
    checkpoint, folder = tiny_files
    code = fewshot_script.main(["--checkpoint", str(checkpoint), "--data-dir", str(folder), "--shots", "1", "5",
                                "10", "25", "--seeds", "3", "--l2", "1024", "1", "--no-progress"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    assert "16x16 resized bilinearly to 8x8" in out
    assert "features of 16 dimensions" in out and "4 classes (chance 25.0%)" in out
    assert re.search(r"shots\s+l2=1024\s+l2=1\n", out)
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+) ±\s+([\d.]+)%\s+([\d.]+) ±\s+([\d.]+)%$", out, flags=re.M)
    assert [int(row[0]) for row in rows] == [1, 5, 10, 25]
    for _, *cells in rows:
        assert all(0 <= float(v) <= 100 for v in cells)
    assert all(float(row[1]) > 75 for row in rows[1:])  # far above chance (25%) from 5 shots on
    assert re.search(r"time: features [\d.]+ s \(\d+ training \+ 80 test images", out)


def test_script_resize_and_central_crop(tiny_files, capsys):
    checkpoint, folder = tiny_files
    assert fewshot_script.main(["--checkpoint", str(checkpoint), "--data-dir", str(folder), "--shots", "2",
                                "--seeds", "1", "--image-size", "10", "--limit-test", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resized bilinearly to 10x10, central 8x8 crop" in out and "on 8 test images" in out
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    np.testing.assert_array_equal(fewshot_script.resize_and_crop(images, (4, 4), (2, 2)), images[:, 1:3, 1:3])
    resized = fewshot_script.resize_and_crop(np.full((1, 3, 5, 2), 77, np.uint8), (6, 4), (6, 4))
    assert resized.shape == (1, 6, 4, 2) and (resized == 77).all()


@pytest.mark.parametrize("args, message", [
    (["--shots", "0"], "--shots: must be >= 1, got 0"),
    (["--l2", "0"], "--l2: must be > 0"),
    (["--shots", "31"], "--shots 31: class 0 has 30 training images, fewer than the 31 shots"),
    (["--image-size", "6"], "--image-size 6 is smaller than the model's 8x8"),
    (["--checkpoint", "missing.npz"], "checkpoint missing.npz does not exist"),
    (["--data-dir", "nowhere"], "no data set in nowhere"),
])
def test_script_bad_input_is_one_line_and_exit_2(tiny_files, capsys, args, message):
    checkpoint, folder = tiny_files
    base = ["--checkpoint", str(checkpoint), "--data-dir", str(folder), "--no-progress"]
    with pytest.raises(SystemExit) as stop:
        fewshot_script.main(base + args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_script_help_shows_the_official_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        fewshot_script.main(["--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: [1, 5, 10, 25])" in out and "(default: 3)" in out and "(default: [1024.0])" in out
