"""The composite blocks: gradient checks, and the weight sharing that makes token and channel mixing what they are."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from helpers import assert_gradients_ok, block_params, mlp_params

from tinymixer.nn.blocks import (
    channel_mixing_backward,
    channel_mixing_forward,
    mixer_block_backward,
    mixer_block_forward,
    mlp_block_backward,
    mlp_block_forward,
    prefixed,
    subtree,
    token_mixing_backward,
    token_mixing_forward,
)
from tinymixer.nn.gradcheck import check_gradients
from tinymixer.nn.layers import gelu_forward, layer_norm_forward


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_mlp_block_gradients(rng, form):
    inputs = dict(x=rng.standard_normal((2, 3, 4)), params=mlp_params(rng, 4, 6))
    assert_gradients_ok(check_gradients(partial(mlp_block_forward, gelu=form), mlp_block_backward, inputs))


def test_token_mixing_gradients(rng):
    inputs = dict(x=rng.standard_normal((2, 5, 3)), params=mlp_params(rng, 5, 4))  # S=5 tokens, C=3 channels
    assert_gradients_ok(check_gradients(token_mixing_forward, token_mixing_backward, inputs))


def test_channel_mixing_gradients(rng):
    inputs = dict(x=rng.standard_normal((2, 5, 3)), params=mlp_params(rng, 3, 4))
    assert_gradients_ok(check_gradients(channel_mixing_forward, channel_mixing_backward, inputs))


@pytest.mark.parametrize("form", ["tanh", "erf"])
def test_mixer_block_gradients(rng, form):
    inputs = dict(x=rng.standard_normal((2, 4, 6)), params=block_params(rng, s=4, c=6, ds=5, dc=7))
    errors = check_gradients(partial(mixer_block_forward, gelu=form), mixer_block_backward, inputs)
    assert len(errors) == 1 + 12  # the input and all twelve parameters of a block
    assert_gradients_ok(errors)


def mlp_reference(v, p):
    """The MLP on one vector, written out: W2 . GELU(W1 . v + b1) + b2."""
    h = gelu_forward(v @ p["Dense_0/kernel"] + p["Dense_0/bias"])[0]
    return h @ p["Dense_1/kernel"] + p["Dense_1/bias"]


def test_token_mixing_is_one_mlp_per_channel_shared_over_channels(rng):
    x, p = rng.standard_normal((2, 5, 3)), mlp_params(rng, 5, 4)
    out, _ = token_mixing_forward(x, p)
    for b in range(2):
        for c in range(3):  # column c: all tokens of one channel
            np.testing.assert_allclose(out[b, :, c], mlp_reference(x[b, :, c], p), rtol=1e-12, atol=1e-12)


def test_channel_mixing_is_one_mlp_per_token_shared_over_tokens(rng):
    x, p = rng.standard_normal((2, 5, 3)), mlp_params(rng, 3, 4)
    out, _ = channel_mixing_forward(x, p)
    for b in range(2):
        for s in range(5):  # row s: all channels of one token
            np.testing.assert_allclose(out[b, s, :], mlp_reference(x[b, s, :], p), rtol=1e-12, atol=1e-12)


def test_mixer_block_matches_paper_equations(rng):
    x, p = rng.standard_normal((2, 4, 6)), block_params(rng, s=4, c=6, ds=5, dc=7)
    y, _ = mixer_block_forward(x, p)
    ln0 = layer_norm_forward(x, p["LayerNorm_0/scale"], p["LayerNorm_0/bias"])[0]
    u = x + np.stack([mlp_reference(ln0[b].T, subtree(p, "token_mixing")).T for b in range(2)])
    ln1 = layer_norm_forward(u, p["LayerNorm_1/scale"], p["LayerNorm_1/bias"])[0]
    expected = u + mlp_reference(ln1, subtree(p, "channel_mixing"))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_subtree_and_prefixed_are_inverse():
    flat = {"MixerBlock_0/LayerNorm_0/scale": 1, "MixerBlock_0/token_mixing/Dense_0/kernel": 2, "MixerBlock_10/x": 3}
    sub = subtree(flat, "MixerBlock_0")
    assert sub == {"LayerNorm_0/scale": 1, "token_mixing/Dense_0/kernel": 2}  # not MixerBlock_10's
    assert prefixed(sub, "MixerBlock_0") == {k: v for k, v in flat.items() if k.startswith("MixerBlock_0/")}
