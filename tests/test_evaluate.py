"""Using a trained model from Python: predict_logits, evaluate, confusion_matrix, and the constructors' sizes --
each wrong argument a clear error (these are the library's API, not a program's options)."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.training.evaluate import confusion_matrix, evaluate, predict_logits


def test_evaluation_helpers_refuse_what_has_no_answer():
    model = tm.make_model("micro/4", num_classes=3, image_size=16)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    assert predict_logits(model, images, batch_size=2).shape == (5, 3)
    with pytest.raises(ValueError, match="batch_size must be a whole number, at least 1; got 0"):
        predict_logits(model, images, batch_size=0)
    with pytest.raises(ValueError, match="at least one image; got 0 images"):
        evaluate(model, images[:0], labels[:0])  # was accuracy nan, with two RuntimeWarnings
    with pytest.raises(ValueError, match="one label per image .* 5 images, 4 labels"):
        evaluate(model, images, labels[:4])
    assert 0 <= evaluate(model, images, labels)["accuracy"] <= 1
    counts = confusion_matrix(labels, np.array([0, 1, 1, 0, 1]), 3)
    assert counts.sum() == 5 and counts[2, 1] == 1
    for wrong in (np.array([0, 1, 3, 0, 1]), labels.astype(float), labels[:4]):
        with pytest.raises(ValueError, match="class indices from 0 to 2"):
            confusion_matrix(labels, wrong, 3)


@pytest.mark.parametrize("name", ["micro/4", "cnn-micro"])
def test_image_size_takes_numpy_integers_and_refuses_what_is_not_a_size(name):
    assert tm.make_model(name, num_classes=3, image_size=np.int64(16)).image_size == (16, 16)
    assert tm.make_model(name, num_classes=3, image_size=(16, 32)).image_size == (16, 32)
    for wrong, says in ((16.0, "got 16.0"), ((16, 16, 3), r"images.shape\[1:3\] gives \(H, W\)"), (True, "got True")):
        with pytest.raises(ValueError, match=f"image_size must be a whole number or \\(height, width\\), .*{says}"):
            tm.make_model(name, num_classes=3, image_size=wrong)


def test_describe_size_checks_the_name_and_the_image_size():
    assert tm.describe_size("B/16", image_size=(224, 160))["num_tokens"] == 14 * 10
    with pytest.raises(ValueError, match="unknown Mixer size 'micro4'; the sizes: S/32"):
        tm.describe_size("micro4")
    with pytest.raises(ValueError, match=r"a CNN size: make_model\(name, ...\).num_params\(\) counts it"):
        tm.describe_size("cnn-micro")
    with pytest.raises(ValueError, match="100x100 is not divisible by B/16's patch size 16"):
        tm.describe_size("B/16", image_size=100)  # the constructor refuses it too
    with pytest.raises(ValueError, match="image_size must be at least 1, got 0x0"):
        tm.describe_size("B/16", image_size=0)


def test_a_whole_number_is_an_integer_of_either_kind_and_never_a_bool():
    from tinymixer.util.numbers import is_whole

    assert is_whole(3) and is_whole(np.int64(3)) and is_whole(0) and is_whole(-2)
    assert not is_whole(True) and not is_whole(3.0) and not is_whole("3") and not is_whole(None)
    assert is_whole(1, low=1) and not is_whole(0, low=1) and not is_whole(np.uint8(0), low=1)
