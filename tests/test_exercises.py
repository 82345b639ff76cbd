"""The exercises' checkers (tinymixer/exercises.py): each passes the reference, calls a stub "not implemented
yet", and fails classic mistakes with a hint that names them. The mistakes here are written as a learner would
write them, independently of the checker's own list (which recognises them by their numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinymixer import exercises
from tinymixer.nn import reference as ref

pytestmark = pytest.mark.host  # exercises are NumPy on the host


def test_there_are_at_least_eight_exercises_over_lessons_2_to_8():
    names = exercises.names()
    assert len(names) >= 8
    assert {exercises._exercise(n).lesson for n in names} == set(range(2, 9))
    for name in names:
        assert callable(exercises.reference(name))
        assert name in exercises.task(name)


@pytest.mark.parametrize("name", exercises.names())
def test_the_reference_passes(name):
    result = exercises.check(name, exercises.reference(name))
    assert result.passed and result.status == "passed", str(result)
    assert "passed" in str(result)


@pytest.mark.parametrize("name", exercises.names())
def test_a_stub_is_not_implemented_yet(name):
    def stub(*args):
        raise NotImplementedError("your turn")
    result = exercises.check(name, stub)
    assert not result.passed and result.status == "not implemented"
    assert "not implemented yet" in str(result)


def test_an_unknown_name_lists_the_exercises():
    with pytest.raises(KeyError, match="dense_backward"):
        exercises.check("dense_backwards", lambda: None)


# ----------------------------------------------------------------------------------------------------------------
# Classic mistakes, exercise by exercise: (exercise, the mistake's name as the checker words it, a learner's code)


def dense_transposed_weight(dout, cache):
    x, w = cache
    return dout @ w, x.T @ dout, dout.sum(axis=0)


def dense_averaged_bias(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout, np.mean(dout, axis=0)


def dense_transposed_dw(dout, cache):
    x, w = cache
    return dout @ w.T, (x.T @ dout).T, dout.sum(axis=0)


def gelu_with_erf_derivative(dout, cache):
    x, _ = cache
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return dout * (cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))


def gelu_without_chain_rule(dout, cache):
    x, t = cache
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t))


def gelu_without_product_rule(dout, cache):
    x, t = cache
    return dout * (1 + t) / 2


def layer_norm_unbiased(x, scale, bias):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6) * scale + bias


def layer_norm_eps_outside(x, scale, bias):
    return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-6) * scale + bias, None


def layer_norm_over_tokens(x, scale, bias):
    return (x - x.mean(-2, keepdims=True)) / np.sqrt(x.var(-2, keepdims=True) + 1e-6) * scale + bias


def layer_norm_backward_no_variance(dout, cache):
    xc, r, xhat, scale = cache
    d = dout * scale
    axes = tuple(range(dout.ndim - 1))
    return r * (d - d.mean(-1, keepdims=True)), (dout * xhat).sum(axes), dout.sum(axes)


def layer_norm_backward_constants(dout, cache):
    xc, r, xhat, scale = cache
    axes = tuple(range(dout.ndim - 1))
    return dout * scale * r, (dout * xhat).sum(axes), dout.sum(axes)


def layer_norm_backward_no_mean(dout, cache):
    xc, r, xhat, scale = cache
    d = dout * scale
    axes = tuple(range(dout.ndim - 1))
    return r * (d - xhat * (d * xhat).mean(-1, keepdims=True)), (dout * xhat).sum(axes), dout.sum(axes)


def gelu_tanh(h):
    return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))


def token_mixing_along_channels(x, p):
    return gelu_tanh(x @ p["Dense_0/kernel"] + p["Dense_0/bias"]) @ p["Dense_1/kernel"] + p["Dense_1/bias"]


def token_mixing_without_gelu(x, p):
    xt = np.swapaxes(x, 1, 2)
    return np.swapaxes((xt @ p["Dense_0/kernel"] + p["Dense_0/bias"]) @ p["Dense_1/kernel"] + p["Dense_1/bias"],
                       1, 2)


def token_mixing_not_transposed_back(x, p):
    xt = np.swapaxes(x, 1, 2)
    return gelu_tanh(xt @ p["Dense_0/kernel"] + p["Dense_0/bias"]) @ p["Dense_1/kernel"] + p["Dense_1/bias"]


def token_backward_no_transpose_in(dout, cache):
    dxt, grads = ref.mlp_backward(dout, cache)
    return np.swapaxes(dxt, 1, 2), grads


def token_backward_no_transpose_out(dout, cache):
    return ref.mlp_backward(np.swapaxes(dout, 1, 2), cache)


def block_backward(dout, cache, first=True, second=True):
    ln0, token, ln1, channel = cache
    dz, cg = ref.channel_mixing_backward(dout, channel)
    dz, s1, b1 = ref.layer_norm_backward(dz, ln1)
    du = dout + dz if second else dz
    dz, tg = ref.token_mixing_backward(du, token)
    dz, s0, b0 = ref.layer_norm_backward(dz, ln0)
    grads = {"LayerNorm_0/scale": s0, "LayerNorm_0/bias": b0, "LayerNorm_1/scale": s1, "LayerNorm_1/bias": b1}
    grads.update({"token_mixing/" + k: v for k, v in tg.items()})
    grads.update({"channel_mixing/" + k: v for k, v in cg.items()})
    return (du + dz if first else dz), grads


def softmax_ce(logits, labels, mean=True, subtract_max=True, subtract_onehot=True):
    z = logits - logits.max(1, keepdims=True) if subtract_max else logits
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    b = len(labels)
    loss = -np.log(p[np.arange(b), labels]).sum()
    d = p.copy()
    if subtract_onehot:
        d[np.arange(b), labels] -= 1
    return (loss / b, d / b) if mean else (loss, d)


def sgd_wrong_order(p, g, v, lr, momentum):
    p_new = p - lr * v
    return p_new, momentum * v + g


def sgd_dampened(p, g, v, lr, momentum):
    v = momentum * v + (1 - momentum) * g
    return p - lr * v, v


def cosine(step, base_lr, total_steps, warmup_steps, shift=0, from_zero=False):
    if step < warmup_steps:
        return base_lr * (step + shift) / warmup_steps
    progress = step / total_steps if from_zero else (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


MISTAKES = [
    ("dense_backward", "a transposed weight in dx", dense_transposed_weight),
    ("dense_backward", "the bias gradient averaged", dense_averaged_bias),
    ("dense_backward", "dW transposed", dense_transposed_dw),
    ("gelu_tanh_backward", "the erf GELU's derivative under the tanh forward", gelu_with_erf_derivative),
    ("gelu_tanh_backward", "the chain rule without u'(x)", gelu_without_chain_rule),
    ("gelu_tanh_backward", "the product rule without its x g'(x) term", gelu_without_product_rule),
    ("layer_norm_forward", "the unbiased variance", layer_norm_unbiased),
    ("layer_norm_forward", "eps outside the square root", layer_norm_eps_outside),
    ("layer_norm_forward", "statistics over the wrong axis", layer_norm_over_tokens),
    ("layer_norm_backward", "LayerNorm without its variance term", layer_norm_backward_no_variance),
    ("layer_norm_backward", "LayerNorm without its mean term", layer_norm_backward_no_mean),
    ("layer_norm_backward", "the mean and variance taken as constants", layer_norm_backward_constants),
    ("token_mixing_forward", "mixing along the channel axis", token_mixing_along_channels),
    ("token_mixing_forward", "no GELU", token_mixing_without_gelu),
    ("token_mixing_forward", "the result left in (B, C, S) order", token_mixing_not_transposed_back),
    ("token_mixing_backward", "dout not brought into the MLP's (B, C, S) order", token_backward_no_transpose_in),
    ("token_mixing_backward", "dx left in (B, C, S) order", token_backward_no_transpose_out),
    ("mixer_block_backward", "both residual paths left out", lambda d, c: block_backward(d, c, False, False)),
    ("mixer_block_backward", "the second residual path left out", lambda d, c: block_backward(d, c, second=False)),
    ("mixer_block_backward", "the first residual path left out", lambda d, c: block_backward(d, c, first=False)),
    ("softmax_cross_entropy", "a sum over the batch", lambda z, y: softmax_ce(z, y, mean=False)),
    ("softmax_cross_entropy", "the one-hot target not subtracted",
     lambda z, y: softmax_ce(z, y, subtract_onehot=False)),
    ("sgd_momentum", "the step taken with the old velocity", sgd_wrong_order),
    ("sgd_momentum", "the velocity as an average", sgd_dampened),
    ("warmup_cosine", "a warm-up one step ahead", lambda *a: cosine(*a, shift=1)),
    ("warmup_cosine", "progress counted from step 0", lambda *a: cosine(*a, from_zero=True)),
]


@pytest.mark.parametrize(("name", "mistake", "fn"), MISTAKES, ids=[f"{n}: {m}" for n, m, _ in MISTAKES])
def test_a_classic_mistake_fails_with_a_hint_naming_it(name, mistake, fn):
    result = exercises.check(name, fn)
    assert not result.passed and result.status == "wrong", str(result)
    assert result.mistake is not None and mistake in result.mistake, str(result)
    assert result.hint and mistake in result.hint
    assert "hint:" in str(result) and "off by" in str(result) or "shape" in str(result)


def test_every_exercise_has_at_least_two_mistakes_tested_here():
    counts = {name: sum(1 for n, _, _ in MISTAKES if n == name) for name in exercises.names()}
    assert min(counts.values()) >= 2, counts


def test_overflow_gets_its_own_hint():
    result = exercises.check("softmax_cross_entropy", lambda z, y: softmax_ce(z, y, subtract_max=False))
    assert not result.passed and "case 3 of 3" in str(result)  # right on moderate logits, wrong on large ones
    assert "maximum" in result.hint and "nan or inf" in str(result)


def test_a_wrong_answer_nobody_anticipated_still_says_what_is_wrong():
    def off_by_ten_percent(dout, cache):
        dx, dw, db = ref.dense_backward(dout, cache)
        return dx, 1.1 * dw, db
    result = exercises.check("dense_backward", off_by_ten_percent)
    assert not result.passed and result.mistake is None
    text = str(result)
    assert "dw is off by" in text and "dx, db are right" in text and "finite differences" in text


def test_a_wrong_shape_and_a_wrong_count_are_named():
    result = exercises.check("dense_backward", lambda dout, cache: (dout @ cache[1].T, cache[0].T @ dout))
    assert "returned 2 values, expected 3" in str(result)
    result = exercises.check("layer_norm_backward", lambda dout, cache: (dout, dout, dout))
    assert "has shape" in str(result)


def test_an_error_is_reported_with_its_message_and_a_hint():
    def transposed_everywhere(dout, cache):
        x, w = cache
        return dout @ w, dout @ x.T, dout.sum(axis=0)  # fine on the square first case, an error on the second
    result = exercises.check("dense_backward", transposed_everywhere)
    assert result.status == "wrong" and "case 1 of 3" in str(result)
    result = exercises.check("dense_backward", lambda dout, cache: (dout.reshape(3, -1), None, None))  # 16 = 3 x ?
    assert result.status == "error" and "case 1 of 3" in str(result)
    assert "ValueError" in str(result) and "cannot reshape" in str(result) and "transposed" in result.hint


def test_a_function_that_writes_into_its_inputs_cannot_fool_the_check():
    def in_place(p, g, v, lr, momentum):
        v *= momentum
        v += g
        p -= lr * v
        return p, v
    assert exercises.check("sgd_momentum", in_place).passed


def test_edge_cases_a_review_found():
    def complex_answer(dout, cache):
        dx, dw, db = ref.dense_backward(dout, cache)
        return dx + 5j, dw, db
    assert not exercises.check("dense_backward", complex_answer).passed
    as_list = exercises.check("dense_backward", lambda dout, cache: list(ref.dense_backward(dout, cache)))
    assert as_list.passed, str(as_list)
    missing_return = exercises.check("gelu_tanh_backward", lambda dout, cache: None)
    assert "return" in str(missing_return) and not missing_return.passed
    in_float32 = exercises.check("dense_backward", lambda dout, cache: tuple(
        g.astype(np.float32) for g in ref.dense_backward(dout, cache)))
    assert not in_float32.passed and "float32" in str(in_float32) and "float64" in str(in_float32)

    def log_of_zero(z, y):  # shifts by the maximum, then takes log(p): -inf for a far-off class
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d = p.copy()
        d[np.arange(len(y)), y] -= 1
        return -np.log(p[np.arange(len(y)), y]).mean(), d / len(y)
    result = exercises.check("softmax_cross_entropy", log_of_zero)  # a label's p underflows at logits ~1000
    assert not result.passed and "case 3 of 3" in str(result) and "log(0)" in result.hint
