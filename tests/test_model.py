"""The whole model: checkpoint layout, the paper's sizes and parameter counts, initialisation, gradients, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host, nudge, small_model

import tinymixer as tm
from tinymixer import chunks
from tinymixer.nn.gradcheck import directional_check, numerical_gradient, rel_error
from tinymixer.nn.mixer import describe_size


def loss_fn(model, images, labels):
    return lambda: tm.softmax_cross_entropy(model.forward(images), labels)[0]


def forward_backward(model, images, labels):
    loss, dlogits = tm.softmax_cross_entropy(model.forward(images), labels)
    dimages = model.backward(dlogits)
    return loss, dimages


# -- layout, sizes, counts ----------------------------------------------------------------------------------------

def test_params_follow_the_official_checkpoint_layout():
    model = tm.MlpMixer(num_classes=10, num_blocks=2, patch_size=4, hidden_dim=8, tokens_mlp_dim=6,
                        channels_mlp_dim=12, image_size=(8, 12))
    s = 2 * 3
    expected = {"stem/kernel": (4, 4, 3, 8), "stem/bias": (8,)}
    for i in range(2):
        b = f"MixerBlock_{i}"
        expected.update({
            f"{b}/LayerNorm_0/scale": (8,), f"{b}/LayerNorm_0/bias": (8,),
            f"{b}/token_mixing/Dense_0/kernel": (s, 6), f"{b}/token_mixing/Dense_0/bias": (6,),
            f"{b}/token_mixing/Dense_1/kernel": (6, s), f"{b}/token_mixing/Dense_1/bias": (s,),
            f"{b}/LayerNorm_1/scale": (8,), f"{b}/LayerNorm_1/bias": (8,),
            f"{b}/channel_mixing/Dense_0/kernel": (8, 12), f"{b}/channel_mixing/Dense_0/bias": (12,),
            f"{b}/channel_mixing/Dense_1/kernel": (12, 8), f"{b}/channel_mixing/Dense_1/bias": (8,),
        })
    expected.update({"pre_head_layer_norm/scale": (8,), "pre_head_layer_norm/bias": (8,),
                     "head/kernel": (8, 10), "head/bias": (10,)})
    assert {k: v.shape for k, v in model.params.items()} == expected
    assert model.num_tokens == s


# Paper Table 1: parameter counts in millions at 224 px, excluding the head.
PAPER_MILLIONS = {"S/32": 19, "S/16": 18, "B/32": 60, "B/16": 59, "L/32": 206, "L/16": 207, "H/14": 431}


@pytest.mark.parametrize("name", PAPER_MILLIONS)
def test_paper_table1_parameter_counts(name):
    counts = describe_size(name, num_classes=1000, image_size=224)  # from shapes alone: no 431M weights allocated
    assert round(counts["params_without_head"] / 1e6) == PAPER_MILLIONS[name]


@pytest.mark.parametrize("name, exact", [("B/16", 59_880_472), ("B/32", 60_293_428), ("L/16", 208_196_168)])
def test_official_exact_parameter_counts(name, exact):
    assert describe_size(name, num_classes=1000, image_size=224)["params"] == exact


def test_describe_size_agrees_with_a_built_model():
    model = tm.MlpMixer.from_name("S/32", num_classes=7, image_size=64)
    counts = describe_size("S/32", num_classes=7, image_size=64)
    assert counts["params"] == model.num_params() == sum(v.size for v in model.params.values())
    assert counts["flops"] == model.flops_per_image() and counts["num_tokens"] == model.num_tokens


def test_from_name_builds_the_named_size():
    model = tm.MlpMixer.from_name("S/32", num_classes=5, image_size=64, dtype="float32")
    assert (model.num_blocks, model.patch_size, model.hidden_dim, model.tokens_mlp_dim, model.channels_mlp_dim) == (
        8, 32, 512, 256, 2048)
    assert model.params["MixerBlock_7/token_mixing/Dense_0/kernel"].shape == (4, 256)
    tiny = tm.MlpMixer.from_name("tiny/4", num_classes=10, image_size=32)
    assert tiny.num_tokens == 64 and tiny.hidden_dim == 128
    with pytest.raises(ValueError, match="known sizes"):
        tm.MlpMixer.from_name("XL/7", num_classes=10)


def test_initialisation_is_the_official_one_and_deterministic():
    model = tm.MlpMixer.from_name("small/4", num_classes=10, image_size=32, seed=3, dtype="float64")
    p = {k: host(v) for k, v in model.params.items()}
    assert np.all(p["head/kernel"] == 0) and np.all(p["head/bias"] == 0)
    assert np.all(p["MixerBlock_0/LayerNorm_0/scale"] == 1) and np.all(p["pre_head_layer_norm/bias"] == 0)
    # LeCun normal: variance 1 / fan_in, truncated at 2 standard deviations of the underlying normal
    w = p["MixerBlock_0/channel_mixing/Dense_0/kernel"]  # (256, 1024)
    assert w.std() == pytest.approx(np.sqrt(1 / 256), rel=0.01)
    assert np.abs(w).max() <= 2 * np.sqrt(1 / 256) / 0.87962566103423978
    stem = p["stem/kernel"]  # fan-in 4*4*3
    assert stem.std() == pytest.approx(np.sqrt(1 / 48), rel=0.03)
    again = tm.MlpMixer.from_name("small/4", num_classes=10, image_size=32, seed=3, dtype="float64")
    assert all(np.array_equal(p[k], host(again.params[k])) for k in p)
    other = tm.MlpMixer.from_name("small/4", num_classes=10, image_size=32, seed=4, dtype="float64")
    assert not np.array_equal(p["stem/kernel"], host(other.params["stem/kernel"]))


@pytest.mark.slow
def test_flops_per_image_counts_the_matrix_multiplies():
    model = tm.MlpMixer.from_name("B/16", num_classes=1000, image_size=224, dtype="float32")
    # about 12.6 GFLOPs (2 x multiply-adds) for Mixer-B/16 at 224 px
    assert model.flops_per_image() == pytest.approx(25.2e9, rel=0.02)


# -- gradients ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gelu,threads", [("tanh", "1"), ("erf", "1"), ("tanh", "2")])
@pytest.mark.slow
def test_whole_model_gradient_of_every_parameter_tensor(gelu, threads, monkeypatch):
    # threads "2": the batch is cut into two shards, each run on its own thread, and the gradients summed
    monkeypatch.setattr(chunks, "MIN_SHARD", 1)
    monkeypatch.setenv(chunks.THREADS_ENV, threads)
    model = small_model(gelu=gelu)
    r = np.random.default_rng(0)
    images, labels = r.standard_normal((2, 8, 8, 3)), np.array([0, 2])
    _, dimages = forward_backward(model, images, labels)
    grads = {k: v.copy() for k, v in model.grads.items()}
    assert list(grads) == list(model.params)
    loss = loss_fn(model, images, labels)
    numerical = {name: numerical_gradient(loss, model.params[name]) for name in model.params}
    # The token-mixing output bias adds the same number to every channel of a token; every path from there to the
    # loss passes a LayerNorm over channels, which removes exactly that. Its true gradient is 0, so a relative
    # error would only compare round-off with round-off: check that both are ~0 instead.
    redundant = [name for name in grads if name.endswith("token_mixing/Dense_1/bias")]
    assert len(redundant) == 2
    for name in redundant:
        assert np.abs(grads[name]).max() < 1e-13 and np.abs(numerical.pop(name)).max() < 1e-10
    errors = {name: rel_error(grads[name], numerical[name]) for name in numerical}
    errors["images"] = rel_error(dimages, numerical_gradient(loss, images))
    print("worst:", max(errors, key=errors.get), f"{max(errors.values()):.1e}")
    assert max(errors.values()) < 1e-7, {k: v for k, v in errors.items() if v >= 1e-7}


@pytest.mark.host  # finite differences / PyTorch on the CPU
def test_whole_model_directional_check_at_realistic_size():
    # the CIFAR "tiny/4" size (8 blocks, C 128, 1.13M parameters) in float64, with every parameter randomised
    model = tm.MlpMixer.from_name("tiny/4", num_classes=10, image_size=32, dtype="float64", seed=0)
    r = np.random.default_rng(1)
    for value in model.params.values():
        nudge(value, 0.05 * r.standard_normal(value.shape))  # wakes the zero head and the unit LN scales
    images, labels = r.uniform(-1, 1, (4, 32, 32, 3)), np.array([1, 5, 9, 0])
    forward_backward(model, images, labels)
    numerical, analytic, err = directional_check(loss_fn(model, images, labels), model.params, model.grads)
    print(f"directional derivative: numerical {numerical:.12e} analytic {analytic:.12e} rel {err:.1e}")
    assert err < 1e-9


def test_eval_forward_keeps_no_cache_and_gives_same_logits():
    model = small_model()
    images = np.random.default_rng(0).standard_normal((3, 8, 8, 3))
    np.testing.assert_array_equal(host(model.forward(images, train=True)), host(model.forward(images, train=False)))
    with pytest.raises(RuntimeError, match="train=True"):
        model.backward(np.ones((3, 3)))


def test_backward_checks_dlogits_before_it_lets_the_forward_go():
    model = small_model()
    images = np.random.default_rng(0).standard_normal((3, 8, 8, 3))
    model.forward(images)
    for wrong in (np.ones((3, 7)), np.ones((4, 3)), np.float64(1.0)):
        with pytest.raises(ValueError, match=r"dlogits must be \(images, classes\) = \(3, 3\)"):
            model.backward(wrong)
    assert model.backward(np.ones((3, 3))).shape == images.shape  # the forward's caches are still there


@pytest.mark.parametrize("name", ["micro/4", "cnn-micro"])
def test_an_empty_batch_gives_empty_logits_in_both_families(name):
    model = tm.make_model(name, num_classes=10, image_size=16)
    empty = np.zeros((0, 16, 16, 3), np.float32)
    assert model.forward(empty).shape == model.forward(empty, train=False).shape == (0, 10)
    assert model.features(empty).shape[0] == 0


# -- float32 all the way ------------------------------------------------------------------------------------------

def test_float32_step_never_upcasts():
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, dtype="float32")
    r = np.random.default_rng(0)
    images = r.uniform(-1, 1, (4, 16, 16, 3))  # float64 input is cast to the model's dtype, not the reverse
    logits = model.forward(images)
    assert logits.dtype == np.float32
    # every cached activation is float32 too
    def arrays(obj):
        if isinstance(obj, (tuple, list)):
            for item in obj:
                yield from arrays(item)
        elif isinstance(obj, model.xp.ndarray):
            yield obj
    cached = list(arrays(model._cache))
    assert cached and all(a.dtype == np.float32 for a in cached), {a.dtype for a in cached}
    loss, dlogits = tm.softmax_cross_entropy(logits, np.arange(4))
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32
    dimages = model.backward(dlogits)
    assert dimages.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.grads.values())
    norm = tm.clip_by_global_norm(model.grads, 1.0)
    assert norm.dtype == np.float32
    opt = tm.SGD(momentum=0.9, nesterov=True, weight_decay=1e-4)
    opt.step(model.params, model.grads, lr=0.1)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert all(v.dtype == np.float32 for v in opt.state.values())


def test_float32_gradients_agree_with_float64():
    m64 = small_model("float64")
    m32 = small_model("float32")
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    labels = np.array([1, 2])
    forward_backward(m64, images, labels)
    forward_backward(m32, images, labels)
    for name in m64.grads:
        scale = np.abs(m64.grads[name]).max()
        assert np.abs(m32.grads[name] - m64.grads[name]).max() <= 1e-4 * scale + 1e-6, name
