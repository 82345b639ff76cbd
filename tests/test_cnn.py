"""The CNN baseline (tinymixer/nn/cnn.py): GroupNorm against its definition, every new layer and the whole network
against finite differences (float64), the whole network against PyTorch (its conv2d, group_norm, relu and
autograd; float64), and the network in the places every model goes: config round trip, checkpoints, training.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradients_ok, host, nudge

import tinymixer as tm
from tinymixer.nn.architectures import MODEL_NAMES, make_model, model_from_config
from tinymixer.nn.cnn import CNN_SIZES, ResNet, residual_block_backward, residual_block_forward
from tinymixer.nn.gradcheck import check_gradients, directional_check, rel_error
from tinymixer.nn.layers import group_norm_backward, group_norm_forward, relu_backward, relu_forward
from tinymixer.training.checkpoint import load_model, save_checkpoint


def small_resnet(seed: int = 0, **overrides) -> ResNet:
    """Two stages (an identity block, then a strided block with a projection), 7x5 images (odd sizes: the stride-2
    output is ceil'd), every parameter randomised so that no gradient is trivially zero (the head starts at 0)."""
    config = dict(num_classes=4, widths=(4, 6), depths=(1, 2), groups=2, image_size=(7, 5), dtype="float64",
                  seed=seed) | overrides
    model = ResNet(**config)
    r = np.random.default_rng(seed + 1)
    for value in model.params.values():
        nudge(value, 0.3 * r.standard_normal(value.shape))
    return model


class ReluPatterns:
    """Records which ReLU inputs are positive in every forward (the network's GroupNorm + ReLU wrapped: the ReLU's
    output is positive exactly where its input was), so that a finite difference can tell whether its stencil
    crossed a kink."""

    def __init__(self, monkeypatch):
        import tinymixer.nn.cnn as cnn

        self.patterns: list = []
        original = cnn.group_norm_relu_forward

        def recording(*args, **kwargs):
            out, cache = original(*args, **kwargs)
            self.patterns.append(np.asarray(out > 0).copy())
            return out, cache

        monkeypatch.setattr(cnn, "group_norm_relu_forward", recording)

    def take(self) -> list:
        patterns, self.patterns = self.patterns, []
        return patterns


def smooth_numerical_gradient(loss, x, relus: ReluPatterns, h: float = 1e-3):
    """The four-point finite difference of the scalar ``loss()`` with respect to every element of ``x`` (as
    ``gradcheck.numerical_gradient``), and where it is valid: ReLU has a kink at 0, and an element whose +-h, +-2h
    nudges switch any ReLU on or off measures a mix of two slopes, not the derivative. Such elements are marked
    invalid (False) instead of failing the check: a difference quotient across a kink is not a derivative."""
    relus.take()
    loss()
    reference = relus.take()
    flat, grad, valid = x.reshape(-1), np.zeros(x.size), np.ones(x.size, dtype=bool)
    for i in range(x.size):
        old, values = float(flat[i]), {}
        for shift in (h, -h, 2 * h, -2 * h):
            flat[i] = old + shift
            values[shift] = float(loss())
            valid[i] &= all((a == b).all() for a, b in zip(relus.take(), reference, strict=True))
        flat[i] = old
        grad[i] = (8.0 * (values[h] - values[-h]) - (values[2 * h] - values[-2 * h])) / (12.0 * h)
    return grad.reshape(x.shape), valid.reshape(x.shape)


def assert_smooth_gradients_ok(analytic: dict, numerical: dict, min_valid: float = 0.8, tol: float = 1e-7):
    """Relative errors over the valid elements below ``tol``; at least ``min_valid`` of all elements valid."""
    errors, valid_count, total = {}, 0, 0
    for name, (grad, valid) in numerical.items():
        errors[name] = rel_error(np.asarray(analytic[name])[valid], grad[valid]) if valid.any() else 0.0
        valid_count, total = valid_count + int(valid.sum()), total + valid.size
    print(f"{valid_count}/{total} elements away from ReLU kinks;", {k: f"{v:.1e}" for k, v in errors.items()})
    assert valid_count >= min_valid * total, f"only {valid_count} of {total} elements could be checked"
    assert_gradients_ok(errors, tol)


# -- GroupNorm ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_matches_its_definition(rng, groups):
    x = rng.standard_normal((3, 4, 5, 6)) * 3 + 1
    scale, bias = rng.standard_normal(6), rng.standard_normal(6)
    out, _ = group_norm_forward(x, scale, bias, groups, eps=1e-6)
    expected = np.empty_like(x)
    per = 6 // groups
    for b in range(3):
        for g in range(groups):
            part = x[b, :, :, g * per:(g + 1) * per]  # all positions, the group's channels
            expected[b, :, :, g * per:(g + 1) * per] = (part - part.mean()) / np.sqrt(part.var() + 1e-6)
    np.testing.assert_allclose(out, expected * scale + bias, rtol=1e-12, atol=1e-12)
    evaluated, cache = group_norm_forward(x, scale, bias, groups, eps=1e-6, train=False)
    assert cache is None
    np.testing.assert_array_equal(evaluated, out)  # per image: training and evaluation are the same function


def test_group_norm_with_one_group_per_channel_is_instance_norm(rng):
    x = rng.standard_normal((2, 3, 3, 4))
    out, _ = group_norm_forward(x, np.ones(4), np.zeros(4), groups=4)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(1, 2)), 1, rtol=1e-4)  # eps 1e-6 against variances ~1


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_group_norm_gradients(rng, groups):
    inputs = {"x": rng.standard_normal((2, 3, 4, 6)), "scale": rng.standard_normal(6), "bias": rng.standard_normal(6)}
    errors = check_gradients(lambda x, scale, bias: group_norm_forward(x, scale, bias, groups), group_norm_backward,
                             inputs)
    assert_gradients_ok(errors)


def test_group_norm_refuses_groups_that_do_not_divide_the_channels(rng):
    with pytest.raises(ValueError, match="dividing the 6 channels"):
        group_norm_forward(rng.standard_normal((1, 2, 2, 6)), np.ones(6), np.zeros(6), groups=4)


# -- ReLU ---------------------------------------------------------------------------------------------------------

def test_relu_forward_and_gradient(rng):
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 0.05] = 0.5  # away from the kink, where finite differences are exact
    out, _ = relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert_gradients_ok(check_gradients(relu_forward, relu_backward, {"x": x}))


# -- The residual block -------------------------------------------------------------------------------------------

def block_params(rng, c_in, c, projection):
    p = {"norm1/scale": 1 + 0.3 * rng.standard_normal(c_in), "norm1/bias": 0.3 * rng.standard_normal(c_in),
         "conv1/kernel": rng.standard_normal((3, 3, c_in, c)) / 3, "norm2/scale": 1 + 0.3 * rng.standard_normal(c),
         "norm2/bias": 0.3 * rng.standard_normal(c), "conv2/kernel": rng.standard_normal((3, 3, c, c)) / 3}
    if projection:
        p["shortcut/kernel"] = rng.standard_normal((1, 1, c_in, c))
    return p


@pytest.mark.parametrize("c_in, c, stride, hw", [(4, 4, 1, (5, 4)), (4, 6, 2, (5, 4)), (2, 4, 2, (6, 6)),
                                                 (4, 6, 1, (3, 3))])
def test_residual_block_gradients(rng, monkeypatch, c_in, c, stride, hw):
    projection = stride != 1 or c_in != c
    x, p = rng.standard_normal((2, *hw, c_in)), block_params(rng, c_in, c, projection)
    relus = ReluPatterns(monkeypatch)
    y, cache = residual_block_forward(x, p, stride, groups=2)
    dy = rng.standard_normal(y.shape)
    dx, grads = residual_block_backward(dy, cache)

    def loss():
        return (residual_block_forward(x, p, stride, groups=2)[0] * dy).sum()

    numerical = {"x": smooth_numerical_gradient(loss, x, relus)}
    numerical |= {name: smooth_numerical_gradient(loss, value, relus) for name, value in p.items()}
    assert_smooth_gradients_ok({"x": dx, **grads}, numerical)
    assert ("shortcut/kernel" in grads) == projection


def test_identity_block_with_a_zero_branch_is_the_identity(rng):
    p = block_params(rng, 4, 4, projection=False)
    p["conv2/kernel"][...] = 0  # the branch adds nothing: y = x exactly, and the shortcut carries dy to dx
    x = rng.standard_normal((2, 3, 3, 4))
    y, cache = residual_block_forward(x, p, stride=1, groups=2)
    np.testing.assert_array_equal(y, x)
    dy = rng.standard_normal(y.shape)
    dx, _ = residual_block_backward(dy, cache)
    np.testing.assert_allclose(dx, dy, atol=1e-12)


# -- The whole network --------------------------------------------------------------------------------------------

@pytest.mark.host  # finite differences / PyTorch on the CPU
@pytest.mark.slow
def test_whole_network_gradients_by_finite_differences(monkeypatch):
    """Every parameter and the images, element by element (float64), through softmax cross-entropy."""
    model = small_resnet()
    r = np.random.default_rng(2)
    images, labels = r.uniform(-1, 1, (3, 7, 5, 3)), np.array([0, 3, 1])
    relus = ReluPatterns(monkeypatch)
    loss, dlogits = tm.softmax_cross_entropy(model.forward(images), labels)
    dimages = model.backward(dlogits)

    def loss_now():
        return tm.softmax_cross_entropy(model.forward(images, train=False), labels)[0]

    numerical = {name: smooth_numerical_gradient(loss_now, value, relus) for name, value in model.params.items()}
    numerical["images"] = smooth_numerical_gradient(loss_now, images, relus)
    assert len(numerical) == len(model.params) + 1
    assert_smooth_gradients_ok({**model.grads, "images": dimages}, numerical)


@pytest.mark.host  # finite differences / PyTorch on the CPU
def test_whole_network_directional_check_on_a_named_size(monkeypatch):
    """cnn-micro as used (3 stages, 16/32/64 channels, 8 groups) on 8x8 images: all gradients along a random
    direction, with the largest step whose stencil crosses no ReLU kink (see ``smooth_numerical_gradient``)."""
    model = make_model("cnn-micro", num_classes=10, image_size=8, dtype="float64", seed=3)
    r = np.random.default_rng(3)
    for value in model.params.values():
        nudge(value, 0.1 * r.standard_normal(value.shape))
    images, labels = r.uniform(-1, 1, (4, 8, 8, 3)), r.integers(0, 10, 4)
    relus = ReluPatterns(monkeypatch)
    _, dlogits = tm.softmax_cross_entropy(model.forward(images), labels)
    model.backward(dlogits)
    reference = relus.take()
    for h in (1e-3, 1e-4, 1e-5):
        numerical, analytic, error = directional_check(
            lambda: tm.softmax_cross_entropy(model.forward(images, train=False), labels)[0], model.params,
            model.grads, h=h)
        patterns = relus.take()
        if all((a == b).all() for a, b in zip(patterns, reference * 4, strict=True)):
            break
    else:
        pytest.fail("every step crossed a ReLU kink")
    print(f"h {h:.0e}: directional derivative {numerical:.9e} vs {analytic:.9e}: {error:.1e}")
    assert error < 1e-7


@pytest.mark.host  # finite differences / PyTorch on the CPU
def test_whole_network_matches_pytorch():
    """The same network in PyTorch (F.conv2d, F.group_norm, F.relu, autograd), the same weights: logits, loss and
    every gradient to 1e-10 relative (float64)."""
    import os

    if os.environ.get("CI"):
        import torch  # noqa: F401 - under CI a missing torch must fail, not skip
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = small_resnet(widths=(4, 6, 8), depths=(2, 1, 1), image_size=(9, 8))
    r = np.random.default_rng(4)
    images, labels = r.uniform(-1, 1, (5, 9, 8, 3)), np.array([0, 3, 1, 1, 2])
    logits = model.forward(images)
    loss, dlogits = tm.softmax_cross_entropy(logits, labels)
    dimages = model.backward(dlogits)

    from tinymixer.tools.twin import tinymixer_grads, torch_network

    net = torch_network(torch, model, "float64")  # nn.Conv2d, nn.GroupNorm, nn.ReLU, autograd
    t_images = torch.tensor(images, requires_grad=True)
    t_logits = net(t_images)
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    t_grads = tinymixer_grads(net)
    assert set(t_grads) == set(model.params)  # every parameter compared

    def normwise(ours, theirs):
        return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())

    errors = {"logits": normwise(logits, t_logits.detach().numpy()), "loss": abs(float(loss) - t_loss.item()),
              "images": normwise(dimages, t_images.grad.numpy())}
    errors |= {name: normwise(model.grads[name], grad) for name, grad in t_grads.items()}
    worst = max(errors, key=errors.get)
    print(f"worst relative difference to PyTorch: {worst} {errors[worst]:.1e}")
    assert errors[worst] < 1e-10, {k: v for k, v in errors.items() if v >= 1e-10}


def test_initialisation_is_he_normal_with_a_zero_head_and_deterministic():
    """The shared ``Network.init_params`` with the CNN's ``init_kernel``: variance 2 / fan_in (not the Mixer's 1)."""
    model = tm.make_model("cnn-tiny", num_classes=10, image_size=32, seed=3, dtype="float64")
    p = {k: host(v) for k, v in model.params.items()}
    assert np.all(p["head/kernel"] == 0) and np.all(p["head/bias"] == 0)
    assert all(np.all(v == 1) for k, v in p.items() if k.endswith("/scale"))
    assert all(np.all(v == 0) for k, v in p.items() if k.endswith("/bias"))
    conv = p["stage2/block1/conv2/kernel"]  # (3, 3, 160, 160): fan-in 1,440
    assert conv.shape == (3, 3, 160, 160)
    assert conv.std() == pytest.approx(np.sqrt(2 / 1440), rel=0.01)
    assert np.abs(conv).max() <= 2 * np.sqrt(2 / 1440) / 0.87962566103423978
    again = tm.make_model("cnn-tiny", num_classes=10, image_size=32, seed=3, dtype="float64")
    assert all(np.array_equal(p[k], host(again.params[k])) for k in p)
    other = tm.make_model("cnn-tiny", num_classes=10, image_size=32, seed=4, dtype="float64")
    assert not np.array_equal(p["stem/kernel"], host(other.params["stem/kernel"]))


def test_sizes_pair_with_the_mixers_in_parameters():
    """Each CNN size has within 15% of the parameters of the Mixer it is compared with (32x32, 10 classes)."""
    for cnn, mixer in [("cnn-micro", "micro/4"), ("cnn-tiny", "tiny/4"), ("cnn-small", "small/4")]:
        a = make_model(cnn, num_classes=10, image_size=32).num_params()
        b = make_model(mixer, num_classes=10, image_size=32).num_params()
        assert abs(a / b - 1) < 0.15, (cnn, a, mixer, b)
    assert set(CNN_SIZES) <= set(MODEL_NAMES)


def test_flops_count_the_convolutions():
    """flops_per_image by hand for one small network: stem, two blocks (one projected), head."""
    model = ResNet(num_classes=3, widths=(2, 4), depths=(1, 1), groups=2, image_size=(6, 5), in_channels=1)
    stem = 6 * 5 * 9 * 1 * 2
    block0 = 6 * 5 * 9 * (2 * 2 + 2 * 2)
    block1 = 3 * 3 * (9 * (2 * 4 + 4 * 4) + 2 * 4)  # at ceil(6/2) x ceil(5/2), with the 1x1 projection
    assert model.flops_per_image() == 2 * (stem + block0 + block1 + 4 * 3)


def test_shards_give_the_same_logits_and_gradients(monkeypatch):
    """The batch cut into shards on threads (as on a multi-core CPU) gives what one pass gives."""
    import tinymixer.nn.network as network

    model = small_resnet()
    images = np.random.default_rng(5).uniform(-1, 1, (6, 7, 5, 3))
    labels = np.array([0, 1, 2, 3, 0, 1])
    results = []
    for shards in (1, 3):
        monkeypatch.setattr(network, "batch_shards",
                            lambda n, xp, k=shards: [slice(i * n // k, (i + 1) * n // k) for i in range(k)])
        logits = model.forward(images)
        model.backward(tm.softmax_cross_entropy(logits, labels)[1])
        results.append((host(logits), host(model.grad_buffer)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-11, atol=1e-13)


# -- Where every model goes ---------------------------------------------------------------------------------------

def test_config_and_checkpoint_round_trip(tmp_path):
    model = small_resnet(dtype="float32")
    again = model_from_config(model.config())
    assert type(again) is ResNet and again.config() == model.config()
    path = save_checkpoint(tmp_path / "cnn.npz", model.params, meta={"model": model.config()})
    loaded = load_model(path)
    images = np.random.default_rng(6).uniform(-1, 1, (2, 7, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(host(loaded(images)), host(model(images)))
    assert type(model_from_config({"num_classes": 3, "num_blocks": 1, "patch_size": 2, "hidden_dim": 4,
                                   "tokens_mlp_dim": 2, "channels_mlp_dim": 4, "image_size": 4})) is tm.MlpMixer


@pytest.mark.slow
def test_trains_through_fit():
    """cnn-micro learns the 8x8 digits through train.fit (the Mixer's loop, optimiser and schedule): 10% -> >80%
    test accuracy in three short epochs (measured 89%)."""
    from sklearn.datasets import load_digits

    from tinymixer.training.train import fit

    digits = load_digits()
    images, labels = (digits.images / 16 * 255).astype(np.uint8)[..., None], digits.target
    model = make_model("cnn-micro", num_classes=10, image_size=8, in_channels=1)
    history = fit(model, images[:1000], labels[:1000], epochs=3, batch_size=32, lr=0.05,
                  test=(images[1400:], labels[1400:]))
    print([round(h["test_accuracy"], 3) for h in history])
    assert history[-1]["test_accuracy"] > 0.8


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (4, 6), "depths": (1,)}, "one width and one depth per stage"),
    ({"widths": (4, 6), "depths": (1, 1), "groups": 4}, "must divide every width"),
    ({"widths": (4, 0), "depths": (1, 1)}, "a width must be a positive integer"),
    ({"widths": (4,), "depths": (1,), "dtype": "float16"}, "float32 or float64"),
])
def test_bad_configurations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(num_classes=3, **({"groups": 2} | kwargs))


def test_wrong_image_size_is_refused():
    model = small_resnet()
    with pytest.raises(ValueError, match="built for 7x5"):
        model.forward(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="unknown model"):
        make_model("cnn-huge", num_classes=3)


def test_the_checks_have_teeth(rng, monkeypatch):
    """A GroupNorm backward without its variance term, and a residual block whose identity shortcut forgets to
    carry dy to dx, are both caught (errors far above the 1e-7 the correct code passes with)."""
    def no_variance_term(dout, cache):
        xhat, rstd, scale, groups = cache
        b, h, w, c = xhat.shape
        d = (dout * scale).reshape(b, h * w, groups, c // groups)
        dx = rstd * (d - d.mean(axis=(1, 3), keepdims=True))  # the xhat * mean(d * xhat) term left out
        return dx.reshape(b, h, w, c), (dout * xhat).reshape(-1, c).sum(0), dout.reshape(-1, c).sum(0)

    inputs = {"x": rng.standard_normal((2, 3, 4, 6)), "scale": rng.standard_normal(6), "bias": rng.standard_normal(6)}
    errors = check_gradients(lambda x, scale, bias: group_norm_forward(x, scale, bias, 2), no_variance_term, inputs)
    assert errors["x"] > 1e-3, errors

    x, p = rng.standard_normal((2, 4, 4, 4)), block_params(rng, 4, 4, projection=False)
    relus = ReluPatterns(monkeypatch)
    y, cache = residual_block_forward(x, p, 1, groups=2)
    dy = rng.standard_normal(y.shape)
    dx, _ = residual_block_backward(dy, cache)
    grad, valid = smooth_numerical_gradient(lambda: (residual_block_forward(x, p, 1, groups=2)[0] * dy).sum(), x,
                                            relus)
    assert rel_error(dx[valid], grad[valid]) < 1e-7  # the correct backward passes ...
    assert rel_error((dx - dy)[valid], grad[valid]) > 1e-2  # ... the one without the shortcut's gradient does not
