"""Fine-tuning from a checkpoint: the new head, and the paper's block-diagonal token mixing for a larger grid."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import host, host_params, put, small_model

import tinymixer as tm
from tinymixer.nn.blocks import subtree, token_mixing_forward
from tinymixer.nn.gradcheck import directional_check
from tinymixer.training.checkpoint import save_checkpoint
from tinymixer.transfer.pretrained import (
    PretrainedError,
    adapt,
    expand_token_mixing,
    load_for_finetuning,
    tile_of_tokens,
)


def pretrained(seed: int = 0) -> tm.MlpMixer:
    """A float64 Mixer for 8x8 images, patch 2 (a 4x4 grid, S = 16), every parameter random."""
    return small_model(patch_size=2, image_size=8, seed=seed)


def expanded(model: tm.MlpMixer, factor: tuple[int, int]) -> tm.MlpMixer:
    params = {k: host(v) for k, v in model.params.items()}
    params, config, _ = adapt(params, model.config(), image_size=(8 * factor[0], 8 * factor[1]))
    big = tm.MlpMixer(**config)
    for name, value in params.items():
        put(big.params[name], value)
    return big


def tiled(tiles: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """Images (B, K_h*8, K_w*8, 3) made of K_h x K_w tiles (tiles: (K_h*K_w, B, 8, 8, 3), row-major)."""
    kh, kw = factor
    rows = [np.concatenate(list(tiles[r * kw:(r + 1) * kw]), axis=2) for r in range(kh)]
    return np.concatenate(rows, axis=1)


def test_tile_and_position_of_every_token():
    tile, position = tile_of_tokens((2, 2), (2, 2))  # a 4x4 grid of four 2x2 tiles
    assert tile.reshape(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert position.reshape(4, 4).tolist() == [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]]


@pytest.mark.parametrize("factor", [(2, 2), (1, 2), (3, 1)])
def test_on_tiled_images_the_expanded_model_is_the_pretrained_one_on_each_tile(factor):
    """The property that makes the block-diagonal initialisation right: token mixing never crosses a tile, so the
    tokens are the pre-trained model's on each tile, and the logits are the mean of its logits on the tiles."""
    small = pretrained()
    big = expanded(small, factor)
    rng = np.random.default_rng(1)
    tiles = rng.uniform(-1, 1, (factor[0] * factor[1], 3, 8, 8, 3))  # K tiles of a batch of 3 images
    images = tiled(tiles, factor)
    mean_of_tiles = np.mean([host(small(t)) for t in tiles], axis=0)
    np.testing.assert_allclose(big(images), mean_of_tiles, rtol=0, atol=1e-12)
    # one token-mixing layer on its own: each tile's tokens come out as the small layer's
    tile, position = tile_of_tokens((4, 4), factor)
    x = rng.standard_normal((2, len(tile), 5))  # (B, K S, C)
    out, _ = token_mixing_forward(x, subtree(host_params(big), "MixerBlock_0/token_mixing"), train=False)
    for t in range(factor[0] * factor[1]):
        mine = np.flatnonzero(tile == t)[np.argsort(position[tile == t])]  # tile t's tokens in its own order
        alone, _ = token_mixing_forward(x[:, mine], subtree(host_params(small), "MixerBlock_0/token_mixing"),
                                        train=False)
        np.testing.assert_allclose(out[:, mine], alone, rtol=0, atol=1e-12)


def test_an_untiled_image_mixes_only_within_tiles():
    """The converse, so the test above cannot pass by accident: changing one tile changes only that tile's tokens
    after token mixing (before fine-tuning has learnt to mix across tiles)."""
    big = expanded(pretrained(), (2, 2))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 64, 5))
    tile, _ = tile_of_tokens((4, 4), (2, 2))
    y = x.copy()
    y[:, tile == 3] += 1.0
    params = subtree(host_params(big), "MixerBlock_1/token_mixing")
    changed = np.abs(token_mixing_forward(y, params, train=False)[0] - token_mixing_forward(x, params,
                                                                                           train=False)[0])
    assert changed[:, tile != 3].max() == 0 and changed[:, tile == 3].min() > 0


def test_gradients_of_an_expanded_model():
    big = expanded(pretrained(), (2, 2))
    rng = np.random.default_rng(3)
    images, labels = rng.uniform(-1, 1, (2, 16, 16, 3)), np.array([0, 2])
    _, dlogits = tm.softmax_cross_entropy(big.forward(images), labels)
    big.backward(dlogits)
    loss = lambda: tm.softmax_cross_entropy(big.forward(images), labels)[0]  # noqa: E731
    _, _, error = directional_check(loss, big.params, big.grads)
    print(f"expanded model, directional check: {error:.1e}")
    assert error < 1e-8


def test_a_grid_that_is_not_a_whole_multiple_is_refused_with_the_sizes_that_work():
    small = pretrained()
    params = {k: tm.to_host(v) for k, v in small.params.items()}
    with pytest.raises(PretrainedError, match=r"12x12 images give a 6x6 grid.*Resolutions that work: 8x8, 16x16"):
        adapt(params, small.config(), image_size=(12, 12))
    with pytest.raises(PretrainedError, match="do not tile"):
        adapt(params, small.config(), image_size=(9, 9))


def test_a_new_zero_head_for_new_classes(tmp_path):
    small = pretrained()
    path = save_checkpoint(tmp_path / "c.npz", small.params, None, {"model": small.config()})
    model, notes = load_for_finetuning(path, num_classes=7, image_size=(16, 16), dtype="float64")
    assert model.params["head/kernel"].shape == (6, 7) and not model.params["head/kernel"].any()
    assert model.num_tokens == 64 and model.tokens_mlp_dim == 4 * small.tokens_mlp_dim
    assert any("new zero-initialised head for 7 classes" in n for n in notes)
    assert any("block-diagonal over 2x2 tiles" in n for n in notes)
    np.testing.assert_array_equal(model.params["stem/kernel"], small.params["stem/kernel"])
    # the same classes: still a new zero head (what fine-tuning means), unless the old one is asked for
    fresh, notes = load_for_finetuning(path, num_classes=3, image_size=(8, 8), dtype="float64")
    assert notes == ["a new zero-initialised head for 3 classes (the checkpoint's has 3), as the official "
                     "fine-tuning does"] and not fresh.params["head/kernel"].any()
    same, notes = load_for_finetuning(path, num_classes=3, image_size=(8, 8), dtype="float64", keep_head=True)
    assert notes == ["the checkpoint's head kept (3 classes)"]
    assert np.array_equal(same.params["head/kernel"], small.params["head/kernel"])
    with pytest.raises(PretrainedError, match="its head has 3 classes and the data 7"):
        load_for_finetuning(path, num_classes=7, image_size=(8, 8), keep_head=True)


def test_expansion_leaves_other_parameters_alone():
    params = {k: tm.to_host(v) for k, v in pretrained().params.items()}
    out = expand_token_mixing(params, (4, 4), (2, 2))
    for name in params:
        if "token_mixing" not in name:
            assert out[name] is params[name]
    assert out["MixerBlock_0/token_mixing/Dense_0/kernel"].shape == (64, 4 * 5)
