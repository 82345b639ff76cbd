"""Every primitive: its forward against the formula it claims, its backward against finite differences (float64)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
from helpers import assert_gradients_ok

from tinymixer.nn.conv import patchify, stem_backward, stem_forward, unpatchify
from tinymixer.nn.gradcheck import check_gradients
from tinymixer.nn.layers import (
    _gelu_bias_forward,
    dense_backward,
    dense_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    mean_pool_backward,
    mean_pool_forward,
    softmax_cross_entropy,
)
from tinymixer.nn.special import erf

# -- dense --------------------------------------------------------------------------------------------------------

def test_dense_forward_is_affine_map(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    out, _ = dense_forward(x, w, b)
    expected = np.einsum("bsi,io->bso", x, w) + b
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_dense_gradients(rng):
    inputs = dict(x=rng.standard_normal((2, 3, 4)), w=rng.standard_normal((4, 5)), b=rng.standard_normal(5))
    assert_gradients_ok(check_gradients(dense_forward, dense_backward, inputs))


def test_dense_on_axis_minus_2_equals_dense_on_swapped_axes(rng):
    # token mixing's layout: the map acts on axis -2 of (B, S, C), as the official code does after a swapaxes
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    out, _ = dense_forward(x, w, b, axis=-2)
    expected = dense_forward(x.swapaxes(1, 2), w, b)[0].swapaxes(1, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_dense_on_axis_minus_2_gradients(rng):
    inputs = dict(x=rng.standard_normal((2, 3, 4)), w=rng.standard_normal((3, 5)), b=rng.standard_normal(5))
    assert_gradients_ok(check_gradients(partial(dense_forward, axis=-2), dense_backward, inputs))


def test_dense_rejects_other_axes(rng):
    with pytest.raises(ValueError, match="axis"):
        dense_forward(np.zeros((2, 3, 4)), np.zeros((2, 5)), None, axis=0)


# -- GELU ---------------------------------------------------------------------------------------------------------

def test_gelu_tanh_forward_matches_formula():
    x = np.linspace(-6, 6, 101)
    out, _ = gelu_forward(x, "tanh")
    expected = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x]
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-15)


def test_gelu_erf_forward_matches_formula():
    x = np.linspace(-6, 6, 101)
    out, _ = gelu_forward(x, "erf")
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-14)


def test_erf_accurate_to_float64_roundoff():
    x = np.concatenate([np.linspace(-10, 10, 20001), np.geomspace(1e-12, 10, 500), -np.geomspace(1e-12, 10, 500)])
    got = erf(x)
    expected = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(got - expected)) < 5e-15
    assert erf(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_gelu_gradients(rng, form):
    x = np.concatenate([rng.uniform(-4, 4, 50), np.linspace(-4, 4, 21)])  # beyond, GELU' ~ 0: only noise is left
    assert_gradients_ok(check_gradients(partial(gelu_forward, approximate=form), gelu_backward, dict(x=x)))


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_gelu_bias_per_row_of_each_slab(rng, form):
    # a (D, 1) bias on x (B, D, C): one value per row D, the token-mixing layout; the result must be GELU(x + bias)
    x, bias = rng.standard_normal((3, 4, 5)), rng.standard_normal((4, 1))
    out, cache = _gelu_bias_forward(x.copy(), bias, form)
    expected, expected_cache = gelu_forward(x + bias, form)
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(cache[0], expected_cache[0], rtol=1e-14, atol=1e-15)


def test_gelu_forms_differ_so_each_needs_its_own_derivative():
    # the two forms agree to ~1e-3: close enough to hide a mixed-up derivative behind a loose tolerance
    x = np.linspace(-4, 4, 801)
    gap = np.abs(gelu_forward(x, "tanh")[0] - gelu_forward(x, "erf")[0]).max()
    assert 1e-5 < gap < 1e-2


def test_gelu_rejects_unknown_form():
    with pytest.raises(ValueError, match="tanh"):
        gelu_forward(np.zeros(3), "relu")


# -- LayerNorm ----------------------------------------------------------------------------------------------------

def test_layer_norm_forward_normalises(rng):
    x = 3.0 + 2.0 * rng.standard_normal((4, 5, 16))
    out, _ = layer_norm_forward(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(-1), x.var(-1) / (x.var(-1) + 1e-6), rtol=1e-12)  # eps 1e-6
    scale, bias = rng.standard_normal(16), rng.standard_normal(16)
    out2, _ = layer_norm_forward(x, scale, bias)
    np.testing.assert_allclose(out2, out * scale + bias, rtol=1e-12, atol=1e-12)


def test_layer_norm_gradients(rng):
    inputs = dict(x=rng.standard_normal((3, 4, 8)), scale=rng.standard_normal(8), bias=rng.standard_normal(8))
    assert_gradients_ok(check_gradients(layer_norm_forward, layer_norm_backward, inputs))


# -- patches and stem ---------------------------------------------------------------------------------------------

def conv2d_stride_p(images, kernel, bias):
    """A direct P x P, stride-P convolution (the paper's stem), written with explicit loops as the reference."""
    b, h, w, _ = images.shape
    p, _, _, c = kernel.shape
    out = np.zeros((b, h // p, w // p, c))
    for i in range(h // p):
        for j in range(w // p):
            window = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # (B, P, P, C_in)
            out[:, i, j, :] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out.reshape(b, -1, c)  # row-major over the patch grid, as the official model flattens


def test_stem_equals_stride_p_convolution(rng):
    images, kernel, bias = rng.standard_normal((2, 12, 8, 3)), rng.standard_normal((4, 4, 3, 5)), rng.standard_normal(5)
    out, _ = stem_forward(images, kernel, bias)
    np.testing.assert_allclose(out, conv2d_stride_p(images, kernel, bias), rtol=1e-12, atol=1e-12)


def test_patchify_roundtrip_and_layout(rng):
    images = rng.standard_normal((2, 8, 12, 3))
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    np.testing.assert_array_equal(patches[1, 4], images[1, 4:8, 4:8, :].ravel())  # grid row 1, column 1
    np.testing.assert_array_equal(unpatchify(patches, 4, (8, 12)), images)


def test_stem_gradients(rng):
    inputs = dict(images=rng.standard_normal((2, 8, 4, 2)), kernel=rng.standard_normal((2, 2, 2, 3)),
                  bias=rng.standard_normal(3))
    assert_gradients_ok(check_gradients(stem_forward, stem_backward, inputs))


# -- pooling ------------------------------------------------------------------------------------------------------

def test_mean_pool_forward_and_gradients(rng):
    x = rng.standard_normal((3, 5, 4))
    np.testing.assert_allclose(mean_pool_forward(x)[0], x.mean(1))
    assert_gradients_ok(check_gradients(mean_pool_forward, mean_pool_backward, dict(x=x)))


# -- softmax cross-entropy ----------------------------------------------------------------------------------------

def naive_cross_entropy(logits, labels, smoothing=0.0):
    k = logits.shape[1]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q = np.full_like(p, smoothing / k)
    q[np.arange(len(labels)), labels] += 1 - smoothing
    return -(q * np.log(p)).sum(1).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_value_and_gradient(rng, smoothing):
    logits, labels = rng.standard_normal((6, 5)), np.array([0, 4, 2, 2, 1, 3])
    loss, dlogits = softmax_cross_entropy(logits, labels, smoothing)
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), naive_cross_entropy(logits, labels, smoothing), rtol=1e-13)

    def forward(logits):
        return softmax_cross_entropy(logits, labels, smoothing)

    errors = check_gradients(forward, lambda dout, d: d * dout, dict(logits=logits))  # dloss/dlogits * dout
    assert_gradients_ok(errors)
    np.testing.assert_allclose(dlogits.sum(1), 0, atol=1e-15)  # softmax - q sums to 0 per row


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 0]))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dlogits))
    assert float(loss) == pytest.approx(1e5 / 2, rel=1e-6)  # second row: -log p = 1e5
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


def test_gelu_evaluation_pass_keeps_no_derivative():
    x = np.linspace(-2, 2, 9)
    out, cache = gelu_forward(x.copy(), train=False)
    np.testing.assert_array_equal(out, gelu_forward(x.copy())[0])
    with pytest.raises(RuntimeError, match="train=True"):
        gelu_backward(np.ones_like(x), cache)


@pytest.mark.parametrize("train", [True, False])
def test_elementwise_layers_accept_transposed_inputs(rng, train):
    x = rng.standard_normal((6, 5, 4)).swapaxes(0, 2)  # not C-contiguous
    out, cache = gelu_forward(x, train=train)
    np.testing.assert_array_equal(out, gelu_forward(np.ascontiguousarray(x), train=train)[0])
    if train:
        dout = rng.standard_normal(x.shape).swapaxes(0, 1).copy().swapaxes(0, 1)  # also transposed
        np.testing.assert_array_equal(gelu_backward(dout, cache), gelu_backward(np.ascontiguousarray(dout), cache))
    scale, bias = rng.standard_normal(6), rng.standard_normal(6)
    y, ln_cache = layer_norm_forward(x, scale, bias)
    np.testing.assert_array_equal(y, layer_norm_forward(np.ascontiguousarray(x), scale, bias)[0])
    dx = layer_norm_backward(np.ones_like(x), ln_cache)[0]
    np.testing.assert_array_equal(dx, layer_norm_backward(np.ones(x.shape), ln_cache)[0])


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_gelu_in_place_equals_out_of_place(rng, form):
    x = rng.standard_normal((70, 1000))  # more than one row block, so the blocks' aliasing is exercised
    expected, expected_cache = gelu_forward(x.copy(), form)
    x_in_place = x.copy()
    out, cache = gelu_forward(x_in_place, form, out=x_in_place)
    assert out is x_in_place
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(cache[0], expected_cache[0])
    dout = rng.standard_normal(x.shape)
    expected_dx = gelu_backward(dout.copy(), cache)
    dx = gelu_backward(dout, cache, out=dout)
    assert dx is dout
    np.testing.assert_array_equal(dx, expected_dx)


def test_gelu_rejects_an_out_it_cannot_write_through():
    x = np.zeros((4, 6))
    with pytest.raises(ValueError, match="C-contiguous"):
        gelu_forward(x, out=np.zeros((6, 4)).T)  # its row blocks would be copies: the result would be lost
    with pytest.raises(ValueError, match="shape"):
        gelu_forward(x, out=np.zeros((4, 5)))


def test_layer_norm_backward_in_place_equals_out_of_place(rng):
    x, scale, bias = rng.standard_normal((70, 1000)), rng.standard_normal(1000), rng.standard_normal(1000)
    _, cache = layer_norm_forward(x, scale, bias)
    dout = rng.standard_normal(x.shape)
    expected = layer_norm_backward(dout.copy(), cache)
    got = layer_norm_backward(dout, cache, out=dout)
    assert got[0] is dout
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_layer_norm_evaluation_pass_gives_same_output_and_keeps_no_cache(rng):
    x, scale, bias = rng.standard_normal((70, 1000)), rng.standard_normal(1000), rng.standard_normal(1000)
    out, cache = layer_norm_forward(x, scale, bias, train=False)
    assert cache is None
    np.testing.assert_array_equal(out, layer_norm_forward(x, scale, bias)[0])


def test_layer_norm_backward_adds_a_residual_gradient_in_the_same_pass():
    """residual= gives dx + residual, to the bit (the Mixer block folds its residual paths in this way), leaves
    dscale and dbias as they were, and refuses a residual in the memory dx is written into."""
    from tinymixer.nn.layers import layer_norm_backward, layer_norm_forward

    rng = np.random.default_rng(0)
    x, scale, bias = rng.standard_normal((3, 4, 16)), rng.standard_normal(16), rng.standard_normal(16)
    dout, residual = rng.standard_normal((3, 4, 16)), rng.standard_normal((3, 4, 16))
    _, cache = layer_norm_forward(x, scale, bias)
    dx, dscale, dbias = layer_norm_backward(dout, cache)
    folded, dscale2, dbias2 = layer_norm_backward(dout.copy(), cache, residual=residual)
    assert np.array_equal(folded, dx + residual) and np.array_equal(dscale, dscale2) and np.array_equal(dbias, dbias2)
    for residual_view in (dout, dout[...], dout[:, :2]):  # the same memory, or a view of it
        with pytest.raises(ValueError, match="residual must not share memory with out"):
            layer_norm_backward(dout, cache, out=dout, residual=residual_view)


def test_stochastic_depth_adds_its_residual_in_the_same_call():
    from tinymixer.nn.layers import stochastic_depth_backward, stochastic_depth_forward

    rng = np.random.default_rng(1)
    x, residual, mask = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5)), np.array([1, 0, 1, 1], bool)
    plain, cache = stochastic_depth_forward(x, 0.25, mask)
    summed, cache2 = stochastic_depth_forward(x.copy(), 0.25, mask, residual=residual)
    assert np.array_equal(summed, plain + residual) and (plain[1] == 0).all()
    dout = rng.standard_normal(x.shape)
    assert np.array_equal(stochastic_depth_backward(dout, cache), stochastic_depth_backward(dout, cache2))
    alias = residual.copy()  # out in the residual's own memory: the residual must be read before it is overwritten
    summed, _ = stochastic_depth_forward(x, 0.25, mask, out=alias, residual=alias)
    assert np.array_equal(summed, plain + residual)
    alias = x.copy()  # x, out and residual one array: u = x + x * mask / (1 - rate)
    summed, _ = stochastic_depth_forward(alias, 0.25, mask, out=alias, residual=alias)
    assert np.array_equal(summed, plain + x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_group_norm_relu_is_the_two_layers_in_one_pass(dtype):
    """ReLU(GroupNorm(x)) fused (the ReLU applied to each block while in the cache, its backward folded into
    GroupNorm's): the same numbers as the two layers one after the other, to the bit, forward (training and
    evaluation) and backward."""
    from tinymixer.nn.layers import (
        group_norm_backward,
        group_norm_forward,
        group_norm_relu_backward,
        group_norm_relu_forward,
        relu_backward,
        relu_forward,
    )

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 4, 8)).astype(dtype)
    scale, bias = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    normed, norm_cache = group_norm_forward(x, scale, bias, 4)
    expected, relu_cache = relu_forward(normed)
    out, cache = group_norm_relu_forward(x, scale, bias, 4)
    assert np.array_equal(out, expected) and (expected == 0).any() and (expected > 0).any()
    assert np.array_equal(group_norm_relu_forward(x, scale, bias, 4, train=False)[0], expected)
    dout = rng.standard_normal(x.shape).astype(dtype)
    separate = group_norm_backward(relu_backward(dout, relu_cache), norm_cache)
    for ours, theirs in zip(group_norm_relu_backward(dout, cache), separate, strict=True):
        assert np.array_equal(ours, theirs)


def test_the_folded_and_fused_layers_pass_finite_difference_checks():
    """The ops this round added, checked by finite differences in float64 (not only against the unfused layers):
    stochastic depth with its residual sum, LayerNorm with a residual path around it (y = LN(x) + x, whose backward
    is layer_norm_backward(dout, cache, residual=dout)), and GroupNorm + ReLU as one layer."""
    from tinymixer.nn.layers import (
        group_norm_relu_backward,
        group_norm_relu_forward,
        layer_norm_backward,
        layer_norm_forward,
        stochastic_depth_backward,
        stochastic_depth_forward,
    )

    rng = np.random.default_rng(3)
    mask = np.array([True, False, True])

    def depth_forward(x, residual):
        return stochastic_depth_forward(x, 0.25, mask, residual=residual)

    def depth_backward(dout, cache):
        return stochastic_depth_backward(dout, cache), dout  # the residual gets dout unchanged

    errors = check_gradients(depth_forward, depth_backward, {"x": rng.standard_normal((3, 4, 5)),
                                                             "residual": rng.standard_normal((3, 4, 5))})
    assert max(errors.values()) < 1e-7, errors

    def ln_plus_x_forward(x, scale, bias):
        out, cache = layer_norm_forward(x, scale, bias)
        return out + x, cache

    def ln_plus_x_backward(dout, cache):
        return layer_norm_backward(dout, cache, residual=dout)

    errors = check_gradients(ln_plus_x_forward, ln_plus_x_backward, {
        "x": rng.standard_normal((3, 4, 8)), "scale": rng.standard_normal(8), "bias": rng.standard_normal(8)})
    assert max(errors.values()) < 1e-7, errors

    # GroupNorm + ReLU: inputs whose normalised values stay clear of the ReLU's kink (|out| > 0.05 before the ReLU)
    x, scale, bias = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal(4), rng.standard_normal(4)
    normed = group_norm_relu_forward(x, scale, bias, 2)[1][0][0] * scale + bias  # the pre-ReLU values
    assert np.abs(normed).min() > 0.05
    errors = check_gradients(lambda x, scale, bias: group_norm_relu_forward(x, scale, bias, 2),
                             group_norm_relu_backward, {"x": x, "scale": scale, "bias": bias})
    assert max(errors.values()) < 1e-7, errors
