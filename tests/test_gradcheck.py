"""The checker itself: it measures what it claims, and it catches wrong backward passes (a check with teeth)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import small_model

import tinymixer as tm
from tinymixer.nn import blocks, layers
from tinymixer.nn.gradcheck import check_gradients, directional_check, numerical_gradient, rel_error


def test_rel_error_definition():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert rel_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1)
    assert rel_error(np.array([0.0]), np.array([1e-12])) == pytest.approx(1e-4)  # the 1e-8 floor
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("order", [2, 4])
def test_numerical_gradient_of_known_function(order):
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    grad = numerical_gradient(lambda: np.sin(x) * x, x, order=order)  # d/dx (x sin x) = sin x + x cos x
    np.testing.assert_allclose(grad, np.sin(x) + x * np.cos(x), rtol=1e-9 if order == 2 else 1e-11)
    assert np.array_equal(x, [[0.5, -1.0], [2.0, 3.0]])  # restored exactly


def test_numerical_gradient_refuses_float32():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: x * 2, x)


# -- wrong backwards must fail ------------------------------------------------------------------------------------

def gelu_tanh_forward_with_erf_derivative(x):
    """The classic bug: a tanh-approximation forward, differentiated as if it were the exact erf form."""
    out, _ = layers.gelu_forward(x, "tanh")
    phi_cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return out, (phi_cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),)  # the exact form's gelu'


def dense_backward_with_mean_bias(dout, cache):
    dx, dw, db = layers.dense_backward(dout, cache)
    return dx, dw, db / dout.reshape(-1, dout.shape[-1]).shape[0]


def layer_norm_backward_without_variance_term(dout, cache):
    xhat, rstd, scale = cache
    dxhat = dout * scale
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True))  # forgets the term through the variance
    c = xhat.shape[-1]
    return dx, (dout * xhat).reshape(-1, c).sum(0), dout.reshape(-1, c).sum(0)


@pytest.mark.parametrize("forward, wrong_backward, inputs", [
    (gelu_tanh_forward_with_erf_derivative, layers.gelu_backward, dict(x=np.linspace(-3, 3, 31))),
    (layers.dense_forward, dense_backward_with_mean_bias,
     dict(x=np.ones((2, 3, 4)) * 0.3, w=np.eye(4, 5), b=np.zeros(5))),
    (layers.layer_norm_forward, layer_norm_backward_without_variance_term,
     dict(x=np.random.default_rng(0).standard_normal((3, 6)), scale=np.ones(6), bias=np.zeros(6))),
])
def test_checker_catches_wrong_backward(forward, wrong_backward, inputs):
    errors = check_gradients(forward, wrong_backward, inputs)
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) > 1e-4  # far above the 1e-7 the tests accept


def test_directional_check_catches_a_wrong_branch_gradient(monkeypatch):
    model = small_model()
    r = np.random.default_rng(0)
    images, labels = r.standard_normal((2, 8, 8, 3)), np.array([0, 1])

    def loss():
        return tm.softmax_cross_entropy(model.forward(images), labels)[0]

    def run_check():
        _, dlogits = tm.softmax_cross_entropy(model.forward(images), labels)
        model.backward(dlogits)
        return directional_check(loss, model.params, model.grads)[2]

    assert run_check() < 1e-9
    correct = blocks.channel_mixing_backward

    def channel_backward_that_drops_half(dout, cache):  # a backward that is wrong by a factor on one branch
        dx, grads = correct(dout, cache)
        return 0.5 * dx, grads

    monkeypatch.setattr(blocks, "channel_mixing_backward", channel_backward_that_drops_half)
    assert run_check() > 1e-4


def test_a_check_never_passes_by_checking_nothing():
    """float32 inputs are refused with the reason (they were skipped, and an empty result looked like a pass);
    allow_float32 checks them to show float32's round-off; a check of no float input is an error."""
    from tinymixer.nn import layers
    from tinymixer.nn.gradcheck import check_gradients

    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((3, 4)), "w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
    assert max(check_gradients(layers.dense_forward, layers.dense_backward, inputs).values()) < 1e-8
    single = {k: v.astype(np.float32) for k, v in inputs.items()}
    with pytest.raises(TypeError, match="gradient checks need float64"):
        check_gradients(layers.dense_forward, layers.dense_backward, single)
    rough = check_gradients(layers.dense_forward, layers.dense_backward, single, allow_float32=True)
    assert set(rough) == {"x", "w", "b"} and max(rough.values()) > 1e-6  # float32's round-off, now visible
    with pytest.raises(ValueError, match="nothing to check"):
        check_gradients(lambda labels: (labels * 1.0, None), lambda dout, cache: dout, {"labels": np.arange(3)})
