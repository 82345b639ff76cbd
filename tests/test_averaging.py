"""The exponential moving average of the weights, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.training.averaging import ExponentialMovingAverage


def test_the_average_by_hand():
    # start: ema = 1.  update 1 (t=1): d = min(0.9, 2/11) = 2/11, ema = 1 + (9/11)(3 - 1) = 1 + 18/11
    # update 2 (t=2): d = min(0.9, 3/12) = 1/4, ema = e1 + (3/4)(5 - e1)
    ema = ExponentialMovingAverage(decay=0.9)
    p = {"w": np.array([1.0])}
    ema.update(p)
    ema.update({"w": np.array([3.0])})
    e1 = 1 + 18 / 11
    assert ema.state["w"][0] == pytest.approx(e1, abs=1e-15)
    ema.update({"w": np.array([5.0])})
    assert ema.state["w"][0] == pytest.approx(e1 + 0.75 * (5 - e1), abs=1e-15)
    for _ in range(1000):  # long after the warm-up the decay is the one asked for
        ema.update({"w": np.array([5.0])})
    assert ema.state["w"][0] == pytest.approx(5.0, abs=1e-12)


def test_resume_is_bit_exact_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    steps = [{"w": rng.standard_normal(4).astype(np.float32)} for _ in range(10)]
    straight = ExponentialMovingAverage(0.99)
    for p in steps:
        straight.update(p)
    first = ExponentialMovingAverage(0.99)
    for p in steps[:5]:
        first.update(p)
    resumed = ExponentialMovingAverage(0.99)
    resumed.state = {k: np.asarray(v).copy() for k, v in first.state.items()}  # through a checkpoint
    for p in steps[5:]:
        resumed.update(p)
    assert resumed.state["w"].dtype == np.float32
    np.testing.assert_array_equal(resumed.state["w"], straight.state["w"])


def test_swapped_in_for_evaluation_and_put_back():
    model = tm.MlpMixer.from_name("micro/4", num_classes=3, image_size=8, patch_size=2)
    ema = ExponentialMovingAverage(0.9)
    ema.update(model.params)
    own = {k: v.copy() for k, v in model.params.items()}
    model.params["head/bias"][...] = 1.0
    x = np.zeros((1, 8, 8, 3), np.float32)
    with ema.swapped_into(model):
        np.testing.assert_array_equal(model(x)[0], model(x)[0] * 0 + model.params["head/bias"])
        assert not model.params["head/bias"].any()  # the average, from before the change
    assert (model.params["head/bias"] == 1.0).all() and set(own) == set(model.params)


def test_a_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        ExponentialMovingAverage(1.0)
