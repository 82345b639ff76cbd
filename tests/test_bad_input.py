"""Bad input gets a clear error that names the problem and the fix, never a silent wrong answer."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm


@pytest.fixture
def model():
    return tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16)


def images(*shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"30x30 is not divisible by the patch size 4.*multiple of 4"):
        tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=30)


def test_wrong_number_of_channels(model):
    with pytest.raises(ValueError, match="1 channels, the model expects 3"):
        model.forward(images(2, 16, 16, 1))


def test_channels_first_gets_a_hint(model):
    with pytest.raises(ValueError, match=r"16 channels, the model expects 3.*channels-first\? transpose"):
        model.forward(images(2, 3, 16, 16))  # (B, C, H, W), as PyTorch lays images out


@pytest.mark.parametrize("shape, hint", [((16, 16, 3), "add a batch axis"), ((2, 16, 16, 3, 1), ""),
                                         ((256, 3), "")])
def test_batch_of_wrong_rank(model, shape, hint):
    with pytest.raises(ValueError, match=r"4-D batch \(batch, 16, 16, 3\).*" + hint):
        model.forward(images(*shape))


def test_wrong_image_size(model):
    with pytest.raises(ValueError, match=r"images are 32x32 but this model was built for 16x16.*image_size"):
        model.forward(images(2, 32, 32, 3))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_integer_images(model, dtype):
    with pytest.raises(TypeError, match=r"floating point.*127.5"):
        model.forward(images(2, 16, 16, 3, dtype=dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_images(model, bad):
    x = images(2, 16, 16, 3)
    x[1, 3, 4, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        model.forward(x)


def test_not_an_array(model):
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        model.forward([[0.0]])


@pytest.mark.parametrize("labels", [np.array([0, 10]), np.array([-1, 3])])
def test_labels_outside_range(labels):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        tm.softmax_cross_entropy(np.zeros((2, 10), np.float32), labels)


def test_labels_not_integers():
    with pytest.raises(TypeError, match="integer array"):
        tm.softmax_cross_entropy(np.zeros((2, 10), np.float32), np.array([0.0, 1.0]))


def test_labels_wrong_count():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        tm.softmax_cross_entropy(np.zeros((2, 10), np.float32), np.array([0, 1, 2]))


def test_bad_model_settings():
    with pytest.raises(ValueError, match="dtype"):
        tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, dtype="float16")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        tm.MlpMixer.from_name("micro/4", num_classes=0, image_size=16)
    with pytest.raises(ValueError, match="gelu"):
        tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, gelu="relu")
