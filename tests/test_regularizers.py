"""Dropout and stochastic depth: forward/backward pairs checked against finite differences with fixed masks (layer,
block, whole model), masks drawn from a seeded generator (same seed same masks, for any number of shards), off in
evaluation passes and at rate 0 (bit for bit the plain network), inverted scaling, configs and checkpoints."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from helpers import TOL, assert_gradients_ok, block_params, mlp_params, small_model

import tinymixer as tm
from tinymixer import chunks
from tinymixer.nn import blocks
from tinymixer.nn.blocks import BlockMasks, draw_block_masks, masks_rows, mixer_block_backward, mixer_block_forward
from tinymixer.nn.gradcheck import check_gradients, numerical_gradient, rel_error
from tinymixer.nn.layers import (
    dropout_backward,
    dropout_forward,
    stochastic_depth_backward,
    stochastic_depth_forward,
)
from tinymixer.nn.masks import keep_mask
from tinymixer.training.checkpoint import config_from_params, load_model, save_checkpoint
from tinymixer.training.train import train_step

# -- the layers ---------------------------------------------------------------------------------------------------

def test_keep_mask_is_seeded_and_keeps_one_minus_rate():
    a = keep_mask(np.random.default_rng([3, 1, 4]), (1000, 1000), 0.3)
    assert a.dtype == bool and a.shape == (1000, 1000)
    assert np.array_equal(a, keep_mask(np.random.default_rng([3, 1, 4]), (1000, 1000), 0.3))  # same seed
    assert not np.array_equal(a, keep_mask(np.random.default_rng([3, 1, 5]), (1000, 1000), 0.3))  # another step
    # 10^6 Bernoulli(0.7) draws: the fraction's standard deviation is 4.6e-4; the bound is 10 of them
    assert abs(a.mean() - 0.7) < 5e-3
    assert keep_mask(np.random.default_rng(0), (1000,), 0.0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        keep_mask(np.random.default_rng(0), (3,), 1.0)


def test_dropout_forward_zeroes_and_rescales(rng):
    x = rng.standard_normal((3, 4, 5))
    mask = keep_mask(rng, x.shape, 0.25)
    out, _ = dropout_forward(x, 0.25, mask)
    np.testing.assert_allclose(out, np.where(mask, x / 0.75, 0.0), rtol=1e-15, atol=0)
    in_place, _ = dropout_forward(x.copy(), 0.25, mask, out=None)
    y = x.copy()
    dropout_forward(y, 0.25, mask, out=y)
    assert np.array_equal(y, out) and np.array_equal(in_place, out)
    with pytest.raises(ValueError, match="shape of its input"):
        dropout_forward(x, 0.25, mask[0])


def test_dropout_gradients(rng):
    x = rng.standard_normal((3, 4, 5))
    mask = keep_mask(rng, x.shape, 0.4)
    assert 0 < mask.mean() < 1  # both kinds of element are checked
    errors = check_gradients(partial(dropout_forward, rate=0.4, mask=mask), dropout_backward, {"x": x})
    assert_gradients_ok(errors)


def test_stochastic_depth_drops_whole_examples(rng):
    x = rng.standard_normal((4, 3, 5))
    mask = np.array([True, False, True, False])
    out, _ = stochastic_depth_forward(x, 0.5, mask)
    np.testing.assert_allclose(out[mask], 2.0 * x[mask], rtol=1e-15, atol=0)
    assert np.all(out[~mask] == 0)
    with pytest.raises(ValueError, match="one entry per example"):
        stochastic_depth_forward(x, 0.5, np.ones((4, 3), bool))


def test_stochastic_depth_gradients(rng):
    x = rng.standard_normal((4, 3, 5))
    mask = np.array([True, False, False, True])
    errors = check_gradients(partial(stochastic_depth_forward, rate=0.3, mask=mask), stochastic_depth_backward,
                             {"x": x})
    assert_gradients_ok(errors)


def test_the_checker_catches_a_dropout_backward_without_the_scale(rng):
    x = rng.standard_normal((3, 4))
    mask = keep_mask(rng, x.shape, 0.4)

    def unscaled_backward(dout, cache):  # the mask applied, the 1 / (1 - rate) forgotten
        return dout * cache[0]

    errors = check_gradients(partial(dropout_forward, rate=0.4, mask=mask), unscaled_backward, {"x": x})
    assert max(errors.values()) > 1e-2


@pytest.mark.parametrize("layer, per_example", [(dropout_forward, False), (stochastic_depth_forward, True)])
def test_inverted_scaling_keeps_the_expectation(rng, layer, per_example):
    # E[out] = x: averaged over K independent masks, out / x is 1 to within its standard error sqrt(p / (1-p) / K)
    rate, draws = 0.3, 4000
    x = rng.standard_normal((draws, 6, 5))  # K draws of a (6, 5) table; one mask each
    if per_example:  # one keep decision per (draw, row): rows are the examples
        mask = keep_mask(rng, (draws * 6,), rate)
        out, _ = layer(x.reshape(draws * 6, 5), rate, mask)
        ratio = (out / x.reshape(draws * 6, 5)).reshape(draws, 6, 5)
    else:
        mask = keep_mask(rng, x.shape, rate)
        ratio = layer(x, rate, mask)[0] / x
    mean = ratio.mean(axis=0)  # (6, 5): E[mask / (1 - p)] estimated K times per position
    standard_error = np.sqrt(rate / (1 - rate) / draws)
    assert np.abs(mean - 1.0).max() < 6 * standard_error  # 30 positions, a 6-sigma bound: never flaky


# -- the blocks ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, -2])
def test_mlp_block_with_dropout_gradients(rng, axis):
    x = rng.standard_normal((2, 4, 3))
    d = x.shape[axis]
    hidden_shape = (2, 4, 6) if axis == -1 else (2, 6, 3)
    dropout = (0.3, keep_mask(rng, hidden_shape, 0.3))
    forward = partial(blocks.mlp_block_forward, axis=axis, dropout=dropout)
    assert_gradients_ok(check_gradients(forward, blocks.mlp_block_backward, dict(x=x, params=mlp_params(rng, d, 6))))


def fixed_block_masks(rng, b=3, s=4, c=6, ds=5, dc=7):
    """Masks with kept and dropped examples on both branches (examples 0: both kept, 1: both dropped, 2: mixed)."""
    masks = draw_block_masks(rng, b, s, c, ds, dc, dropout=0.3, depth=0.4)
    return BlockMasks(0.3, masks.token_dropout, masks.channel_dropout, 0.4,
                      token_depth=np.array([True, False, True]), channel_depth=np.array([True, False, False]))


def test_mixer_block_with_dropout_and_stochastic_depth_gradients(rng):
    masks = fixed_block_masks(rng)
    inputs = dict(x=rng.standard_normal((3, 4, 6)), params=block_params(rng, s=4, c=6, ds=5, dc=7))
    errors = check_gradients(partial(mixer_block_forward, masks=masks), mixer_block_backward, inputs)
    assert len(errors) == 1 + 12
    assert_gradients_ok(errors)


def test_mixer_block_branches_are_skipped_per_example(rng):
    masks = fixed_block_masks(rng)
    x, p = rng.standard_normal((3, 4, 6)), block_params(rng, s=4, c=6, ds=5, dc=7)
    y, _ = mixer_block_forward(x, p, masks=masks)
    assert np.array_equal(y[1], x[1])  # both branches dropped: the block is the identity for this image
    plain, _ = mixer_block_forward(x, p)
    assert not np.allclose(y[0], plain[0])  # kept branches still see dropout inside their MLPs
    # image 2 kept its token branch and skipped its channel branch: y = u = x + TokenMixing(LN_0(x)) / (1 - 0.4)
    ln0 = tm.nn.layers.layer_norm_forward(x, p["LayerNorm_0/scale"], p["LayerNorm_0/bias"])[0]
    token = blocks.token_mixing_forward(ln0, blocks.subtree(p, "token_mixing"), dropout=(0.3, masks.token_dropout))[0]
    np.testing.assert_allclose(y[2], x[2] + token[2] / 0.6, rtol=1e-12, atol=1e-12)


def test_mixer_block_without_masks_is_bit_identical(rng):
    x, p = rng.standard_normal((3, 4, 6)), block_params(rng, s=4, c=6, ds=5, dc=7)
    plain, _ = mixer_block_forward(x, p)
    empty, _ = mixer_block_forward(x, p, masks=BlockMasks())
    # rate 0 with every element kept: multiplications by exactly 1
    ones = BlockMasks(0.0, np.ones((3, 5, 6), bool), np.ones((3, 4, 7), bool), 0.0, np.ones(3, bool), np.ones(3, bool))
    kept, _ = mixer_block_forward(x, p, masks=ones)
    assert np.array_equal(plain, empty) and np.array_equal(plain, kept)


# -- the model: rates, masks, determinism -------------------------------------------------------------------------

def regularized_model(dtype="float64", **overrides):
    """``helpers.small_model`` with 3 blocks (stochastic-depth rates 0, 0.25, 0.5) and dropout 0.2."""
    return small_model(dtype, **({"num_blocks": 3, "dropout": 0.2, "stochastic_depth": 0.5} | overrides))


def test_block_rates_rise_linearly_with_depth():
    model = small_model(num_blocks=5, stochastic_depth=0.4, dropout=0.1)
    np.testing.assert_allclose(model.block_rates(), [(0.1, 0.0), (0.1, 0.1), (0.1, 0.2), (0.1, 0.3), (0.1, 0.4)],
                               rtol=1e-15, atol=0)
    assert small_model(num_blocks=1, stochastic_depth=0.4).block_rates() == [(0.0, 0.0)]
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(ValueError, match="rate in"):
            small_model(dropout=bad)
        with pytest.raises(ValueError, match="rate in"):
            small_model(stochastic_depth=bad)


def test_masks_are_seeded_drawn_in_order_and_shaped_per_block():
    model = regularized_model()
    a = model.draw_masks(np.random.default_rng([7, 0, 3]), 4)
    b = model.draw_masks([7, 0, 3], 4)  # a seed does as well as a Generator made from it
    c = model.draw_masks(np.random.default_rng([7, 0, 4]), 4)  # the next step
    assert len(a) == 3 and a[0].token_depth is None and a[0].channel_depth is None  # block 0: depth rate 0
    assert [m.depth for m in a] == [0.0, 0.25, 0.5] and all(m.dropout == 0.2 for m in a)
    assert a[1].token_dropout.shape == (4, 5, 6) and a[1].channel_dropout.shape == (4, 4, 7)
    assert a[2].token_depth.shape == a[2].channel_depth.shape == (4,)
    for ma, mb, mc in zip(a, b, c, strict=True):
        assert ma.arrays().keys() == mb.arrays().keys() == mc.arrays().keys()
        assert all(np.array_equal(v.array(), mb.arrays()[k].array()) for k, v in ma.arrays().items())
    assert not np.array_equal(a[1].channel_dropout.array(), c[1].channel_dropout.array())
    assert small_model().draw_masks(np.random.default_rng(0), 4) is None


def test_stochastic_depth_keeps_one_minus_rate_over_many_steps():
    model = small_model(num_blocks=3, stochastic_depth=0.5)  # depth only: nothing big to draw
    kept = [m.array() for step in range(2000)
            for m in model.draw_masks(np.random.default_rng([0, 0, step]), 8)[2].arrays().values()]
    fraction = np.mean(kept)  # 32000 draws at rate 0.5: standard deviation 2.8e-3
    assert abs(fraction - 0.5) < 0.02


def test_training_forward_with_rng_is_reproducible_and_each_step_differs():
    model = regularized_model()
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
    first = model.forward(images, rng=np.random.default_rng([1, 0, 5]))
    again = model.forward(images, rng=[1, 0, 5])
    other = model.forward(images, rng=[1, 0, 6])
    assert np.array_equal(first, again) and not np.allclose(first, other)
    masks = model.draw_masks([1, 0, 5], 4)
    assert np.array_equal(model.forward(images, masks=masks), first)  # the masks are all the randomness


def test_off_in_evaluation_passes():
    model = regularized_model()
    plain = regularized_model(dropout=0.0, stochastic_depth=0.0)  # the same weights (the same seed)
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
    generator = np.random.default_rng(9)
    state = generator.bit_generator.state
    evaluated = model.forward(images, train=False, rng=generator)
    assert generator.bit_generator.state == state  # nothing drawn
    assert np.array_equal(evaluated, plain.forward(images, train=False))
    assert np.array_equal(model(images), evaluated) and np.array_equal(model.features(images), plain.features(images))
    with pytest.raises(ValueError, match="rng="):  # a training pass cannot go without its masks
        model.forward(images)


def test_rate_zero_is_the_plain_network_bit_for_bit(monkeypatch):
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
    labels = np.array([0, 1, 2, 0])
    reference = small_model()
    logits = reference.forward(images)
    reference.backward(tm.softmax_cross_entropy(logits, labels)[1])

    def must_not_run(*args, **kwargs):
        raise AssertionError("a regulariser ran at rate 0")

    for name in ("dropout_forward", "dropout_backward", "stochastic_depth_forward", "stochastic_depth_backward"):
        monkeypatch.setattr(blocks, name, must_not_run)  # no extra pass of any kind
    model = small_model(dropout=0.0, stochastic_depth=0.0)
    generator = np.random.default_rng(9)
    state = generator.bit_generator.state
    same = model.forward(images, train=True, rng=generator)
    assert generator.bit_generator.state == state
    model.backward(tm.softmax_cross_entropy(same, labels)[1])
    assert np.array_equal(same, logits)
    assert all(np.array_equal(model.grads[k], reference.grads[k]) for k in reference.grads)
    assert model.config() == reference.config()


def test_masks_given_by_hand_are_checked():
    model = regularized_model()
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
    with pytest.raises(ValueError, match="masks for 2 blocks given to a model of 3"):
        model.forward(images, masks=model.draw_masks([0], 4)[:2])
    with pytest.raises(ValueError, match="a batch of 4 needs"):
        model.forward(images, masks=model.draw_masks([0], 3))
    with pytest.raises(ValueError, match="rates"):
        model.forward(images, masks=regularized_model(dropout=0.1).draw_masks([0], 4))


# -- the model: gradients -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_whole_model_gradient_of_every_parameter_tensor_with_both_regularizers():
    model = regularized_model()
    r = np.random.default_rng(0)
    images, labels = r.standard_normal((4, 8, 8, 3)), r.integers(0, 3, 4)
    # Fixed masks make the loss a deterministic, smooth function of the parameters. Their seed is one where every
    # gradient element is above ~1e-6: an element of ~1e-7 (a hidden unit left with few contributions by dropout
    # and skipped branches; other seeds give some) is checked by the stencil only to its round-off, ~1e-13
    # absolute, which is a relative error of ~1e-6 for it.
    masks = model.draw_masks(np.random.default_rng([0, 0, 1]), 4)
    depth = np.concatenate([m.arrays()[k].array() for m in masks for k in ("token_depth", "channel_depth")
                            if k in m.arrays()])
    assert depth.any() and not depth.all()  # some branches kept and some skipped
    loss, dlogits = tm.softmax_cross_entropy(model.forward(images, masks=masks), labels)
    dimages = model.backward(dlogits)
    grads = {k: v.copy() for k, v in model.grads.items()}

    def loss_fn():
        return tm.softmax_cross_entropy(model.forward(images, masks=masks), labels)[0]

    numerical = {name: numerical_gradient(loss_fn, model.params[name]) for name in model.params}
    # the token-mixing output bias is removed by the LayerNorms after it (tests/test_model.py): its gradient is 0,
    # scaled by a stochastic-depth factor or not
    for name in [n for n in grads if n.endswith("token_mixing/Dense_1/bias")]:
        assert np.abs(grads[name]).max() < 1e-13 and np.abs(numerical.pop(name)).max() < 1e-10
    errors = {name: rel_error(grads[name], numerical[name]) for name in numerical}
    errors["images"] = rel_error(dimages, numerical_gradient(loss_fn, images))
    print("worst:", max(errors, key=errors.get), f"{max(errors.values()):.1e}")
    assert max(errors.values()) < TOL, {k: v for k, v in errors.items() if v >= TOL}


def test_sharded_forward_and_backward_with_masks_equal_one_thread(monkeypatch):
    monkeypatch.setattr(chunks, "MIN_SHARD", 1)
    r = np.random.default_rng(0)
    images, labels = r.standard_normal((6, 8, 8, 3)), r.integers(0, 3, 6)
    results = {}
    for threads in ("1", "2"):
        monkeypatch.setenv(chunks.THREADS_ENV, threads)
        model = regularized_model()
        logits = model.forward(images, rng=np.random.default_rng([2, 1, 7]))  # the masks drawn before the cut
        model.backward(tm.softmax_cross_entropy(logits, labels)[1])
        results[threads] = logits, dict(model.grads)
    assert len(chunks.batch_shards(6)) == 2
    np.testing.assert_allclose(results["2"][0], results["1"][0], rtol=1e-13, atol=1e-15)
    for name, g in results["1"][1].items():
        np.testing.assert_allclose(results["2"][1][name], g, rtol=1e-11, atol=1e-14, err_msg=name)


def test_parts_of_a_batch_take_their_rows_of_the_whole_batch_masks():
    # what gradient accumulation and data-parallel processes do: masks drawn for the global batch, rows cut out
    model = regularized_model()
    images = np.random.default_rng(0).standard_normal((6, 8, 8, 3))
    masks = model.draw_masks([4, 2, 0], 6)
    whole = model.forward(images, masks=masks)
    parts = [model.forward(images[rows], masks=masks_rows(masks, rows)) for rows in (slice(0, 2), np.arange(2, 6))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-13, atol=1e-15)


def test_float32_training_step_with_regularizers_stays_float32():
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, dtype="float32", dropout=0.1,
                                  stochastic_depth=0.1)
    r = np.random.default_rng(0)
    images = r.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    logits = model.forward(images, rng=[0, 0, 0])
    loss, dlogits = tm.softmax_cross_entropy(logits, np.arange(4))
    model.backward(dlogits)
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in model.grads.values())


# -- configs and checkpoints --------------------------------------------------------------------------------------

PRE_REGULARIZER_KEYS = {"num_classes", "num_blocks", "patch_size", "hidden_dim", "tokens_mlp_dim", "channels_mlp_dim",
                        "image_size", "in_channels", "gelu", "dtype"}


def test_config_has_the_rates_only_when_they_are_on():
    assert set(small_model().config()) == PRE_REGULARIZER_KEYS  # unchanged for every model without them
    config = regularized_model().config()
    assert config["dropout"] == 0.2 and config["stochastic_depth"] == 0.5
    rebuilt = tm.MlpMixer(**config)
    assert (rebuilt.dropout, rebuilt.stochastic_depth) == (0.2, 0.5) and rebuilt.config() == config
    assert set(small_model(stochastic_depth=0.1).config()) == PRE_REGULARIZER_KEYS | {"stochastic_depth"}


def test_checkpoints_with_and_without_the_rates_load(tmp_path):
    model = regularized_model("float32")
    save_checkpoint(tmp_path / "new.npz", model.params, None, {"model": model.config()})
    loaded = load_model(tmp_path / "new.npz")
    assert (loaded.dropout, loaded.stochastic_depth) == (0.2, 0.5)
    # a checkpoint written before the regularisers existed: its config has none of their keys
    old_config = {"num_classes": 3, "num_blocks": 3, "patch_size": 4, "hidden_dim": 6, "tokens_mlp_dim": 5,
                  "channels_mlp_dim": 7, "image_size": [8, 8], "in_channels": 3, "gelu": "tanh", "dtype": "float32"}
    save_checkpoint(tmp_path / "old.npz", model.params, None, {"model": old_config})
    old = load_model(tmp_path / "old.npz")
    assert (old.dropout, old.stochastic_depth) == (0.0, 0.0) and old.config() == old_config
    # an official checkpoint (parameters only): the config read off the shapes
    official = tm.MlpMixer(**config_from_params({k: tm.to_host(v) for k, v in model.params.items()}))
    assert not official.regularized
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(old.forward(images, train=False), loaded.forward(images, train=False))


def test_train_step_of_a_regularized_model_needs_its_masks():
    # train_step (tinymixer/training/train.py) passes no rng yet: a regularised model refuses rather than draw unseeded
    model = regularized_model("float32")
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="rng="):
        train_step(model, tm.SGD(momentum=0.9), images, np.array([0, 1, 2, 0]), 0.1)
