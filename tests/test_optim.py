"""The optimiser, the clipping and the schedule, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinymixer as tm


def run_sgd_on_half_square(steps, **kwargs):
    """Minimise f(p) = p^2 / 2 (gradient p) from p = 1 with lr 0.1; return p after each step."""
    params, opt, trace = {"p": np.array([1.0])}, tm.SGD(**kwargs), []
    for _ in range(steps):
        opt.step(params, {"p": params["p"].copy()}, lr=0.1)
        trace.append(float(params["p"][0]))
    return trace


def test_sgd_momentum_by_hand():
    # v1 = 1, p1 = 1 - 0.1 = 0.9;  v2 = 0.9 + 0.9 = 1.8, p2 = 0.72;  v3 = 1.62 + 0.72 = 2.34, p3 = 0.486
    assert run_sgd_on_half_square(3, momentum=0.9) == pytest.approx([0.9, 0.72, 0.486], abs=1e-15)


def test_sgd_without_momentum_is_gradient_descent():
    assert run_sgd_on_half_square(2, momentum=0.0) == pytest.approx([0.9, 0.81], abs=1e-15)


def test_sgd_nesterov_by_hand():
    # v1 = 1, p1 = 1 - 0.1 (1 + 0.9) = 0.81;  v2 = 0.9 + 0.81 = 1.71, p2 = 0.81 - 0.1 (0.81 + 1.539) = 0.5751
    assert run_sgd_on_half_square(2, momentum=0.9, nesterov=True) == pytest.approx([0.81, 0.5751], abs=1e-15)


def test_decoupled_weight_decay_by_hand():
    params, opt = {"p": np.array([2.0])}, tm.SGD(momentum=0.9, weight_decay=0.1)
    opt.step(params, {"p": np.array([0.0])}, lr=0.5)  # p <- p - lr * wd * p = 2 - 0.1
    assert params["p"][0] == pytest.approx(1.9, abs=1e-15)


def test_sgd_rejects_bad_settings():
    with pytest.raises(ValueError, match="momentum"):
        tm.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        tm.SGD(weight_decay=-1)


def test_clip_above_threshold_scales_all_gradients_together():
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}  # global norm 5
    norm = tm.clip_by_global_norm(grads, 1.0)
    assert float(norm) == 5.0
    np.testing.assert_allclose(grads["a"], [0.6], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-15)
    assert float(tm.global_norm(grads)) == pytest.approx(1.0, abs=1e-15)


def test_clip_below_threshold_changes_nothing():
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert float(tm.clip_by_global_norm(grads, 10.0)) == 5.0
    assert grads["a"][0] == 3.0 and grads["b"][0] == 4.0


def test_clip_of_zero_gradients_stays_zero():
    grads = {"a": np.zeros(3)}
    assert float(tm.clip_by_global_norm(grads, 1.0)) == 0.0
    assert np.all(grads["a"] == 0) and np.all(np.isfinite(grads["a"]))


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),  # warm-up starts at 0
    (5, 0.5),  # half-way through the warm-up
    (10, 1.0),  # the peak
    (35, 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter into the cosine
    (60, 0.5),  # half-way through the cosine
    (110, 0.0),  # the end
    (500, 0.0),  # after the end it stays at end_lr
])
def test_warmup_cosine_at_chosen_steps(step, expected):
    assert tm.warmup_cosine(step, base_lr=1.0, total_steps=110, warmup_steps=10) == pytest.approx(expected, abs=1e-15)


def test_warmup_cosine_end_lr_and_no_warmup():
    assert tm.warmup_cosine(60, 1.0, 110, 10, end_lr=0.1) == pytest.approx(0.55)
    assert tm.warmup_cosine(0, 0.5, 100) == 0.5
    with pytest.raises(ValueError, match="warmup_steps"):
        tm.warmup_cosine(0, 1.0, total_steps=10, warmup_steps=20)


@pytest.mark.parametrize(("spec", "steps"), [("5%", 50), ("0%", 0), ("100%", 1000), ("2ep", 200), ("0.5ep", 50),
                                             ("1 epochs", 100), ("200", 200), (30, 30)])
def test_warmup_in_steps_epochs_or_a_fraction_of_the_run(spec, steps):
    assert tm.warmup_steps(spec, total_steps=1000, steps_per_epoch=100) == steps


@pytest.mark.parametrize(("spec", "message"), [("2000", "longer than the whole run"), ("11ep", "longer than"),
                                               ("-5", "negative"), ("150%", "not understood"),
                                               ("abc", "not understood"), ("5 %%", "not understood")])
def test_a_warmup_that_does_not_fit_is_an_error_not_silently_capped(spec, message):
    with pytest.raises(ValueError, match=message):
        tm.warmup_steps(spec, total_steps=1000, steps_per_epoch=100)
