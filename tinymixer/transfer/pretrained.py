"""Starting from a pre-trained Mixer: a new head for new classes, and a larger patch grid for a higher resolution.

Fine-tuning, as the official code does it: every weight of the pre-trained checkpoint is kept except the head,
which is replaced by a zero-initialised one for the new classes (a zero head starts every class at the same
logit, so fine-tuning begins from the pre-trained features without a random bias).

A higher resolution keeps the patch size, so the patch grid grows and so does the number of tokens S; the token-
mixing MLPs, whose weights are sized by S, no longer fit. The paper (appendix on fine-tuning) grows the grid by an
integer factor K per side and initialises each token-mixing layer block-diagonally from K^2 copies of the pre-trained
one, with its hidden width grown K^2 times with it, so that the new layer first computes the old one on each of K^2
sub-windows of the image. The official code has no such adaptation; this module implements it as the paper
describes: the image is seen as a grid of K_h x K_w *tiles*, each of the pre-training resolution, and every token of
tile t mixes only with the other tokens of tile t, through a copy of the pre-trained weights (and its own copy of the
hidden units). The paper orders the tokens by sub-window so that the matrix is block-diagonal; this model keeps the
official row-major order of the patches over the whole grid, so the same matrix appears with its rows and columns
permuted into that order. Nothing else changes (channel mixing and LayerNorm act on each token alone).

What the expansion guarantees, and ``tests/test_pretrained.py`` checks: on an image made of K_h x K_w tiles, every
token of the expanded model equals the pre-trained model's token at the same place in its tile, so the expanded
model's logits are the mean of the pre-trained model's logits on the tiles (exactly: the head is linear and every
tile has the same number of tokens). Grids that are not an integer multiple of the pre-trained one are refused with
an error that lists the resolutions that work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class PretrainedError(ValueError):
    """A checkpoint cannot be adapted as asked; the message says why and what would work."""


class FamilyError(PretrainedError):
    """The checkpoint holds the other family of network (``held``: its "architecture", "mixer" or "resnet")."""

    def __init__(self, message: str, held: str) -> None:
        super().__init__(message)
        self.held = held


def tile_of_tokens(grid: tuple[int, int], factor: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For the K_h*g_h x K_w*g_w grid of an expanded model, in the model's row-major token order: the tile of each
    token (0 .. K_h*K_w - 1, row-major over the tiles) and its position inside its tile (0 .. g_h*g_w - 1, row-major
    over the pre-trained grid (g_h, g_w))."""
    (gh, gw), (kh, kw) = grid, factor
    rows, cols = np.divmod(np.arange(kh * gh * kw * gw), kw * gw)  # each token's row and column in the large grid
    tile = (rows // gh) * kw + cols // gw
    position = (rows % gh) * gw + cols % gw
    return tile, position


def expand_token_mixing(params: dict[str, np.ndarray], grid: tuple[int, int], factor: tuple[int, int]
                        ) -> dict[str, np.ndarray]:
    """The parameters of a Mixer whose patch grid is ``factor`` = (K_h, K_w) times the pre-trained ``grid`` per
    side: each token-mixing MLP (S -> D_S -> S) becomes one of K S -> K D_S -> K S (K = K_h K_w tiles), block-
    diagonal over the tiles, every block a copy of the pre-trained one. Other parameters are returned as they are.

        Dense_0 kernel (S, D_S)   -> (K S, K D_S):  W'[s', (t, d)] = W[position(s'), d] if tile(s') = t, else 0
        Dense_0 bias   (D_S,)     -> (K D_S,):      b'[(t, d)] = b[d]
        Dense_1 kernel (D_S, S)   -> (K D_S, K S):  W'[(t, d), s'] = W[d, position(s')] if tile(s') = t, else 0
        Dense_1 bias   (S,)       -> (K S,):        b'[s'] = b[position(s')]

    (t, d) is hidden unit d of tile t, numbered t * D_S + d.
    """
    kh, kw = factor
    if (kh, kw) == (1, 1):
        return dict(params)
    tile, position = tile_of_tokens(grid, factor)
    tiles = kh * kw
    own = tile[:, None] == np.arange(tiles)[None, :]  # (K S, K): token s' belongs to tile t
    out = {}
    for name, value in params.items():
        if "/token_mixing/Dense_0/kernel" in name:  # (S, D_S) -> (K S, K D_S)
            d = value.shape[1]
            expanded = own[:, :, None] * value[position][:, None, :]  # (K S, K, D_S): zero off the own tile
            out[name] = expanded.reshape(len(tile), tiles * d).astype(value.dtype)
        elif "/token_mixing/Dense_0/bias" in name:  # (D_S,) -> (K D_S,)
            out[name] = np.tile(value, tiles)
        elif "/token_mixing/Dense_1/kernel" in name:  # (D_S, S) -> (K D_S, K S)
            d = value.shape[0]
            expanded = own.T[:, None, :] * value[:, position][None, :, :]  # (K, D_S, K S)
            out[name] = expanded.reshape(tiles * d, len(tile)).astype(value.dtype)
        elif "/token_mixing/Dense_1/bias" in name:  # (S,) -> (K S,)
            out[name] = value[position]
        else:
            out[name] = value
    return out


def grid_factor(old_grid: tuple[int, int], new_grid: tuple[int, int], patch: int) -> tuple[int, int]:
    """(K_h, K_w) with new_grid = (K_h g_h, K_w g_w), or a PretrainedError that lists the resolutions that work."""
    (gh, gw), (nh, nw) = old_grid, new_grid
    if nh % gh or nw % gw or nh < gh or nw < gw:
        options = ", ".join(f"{k * gh * patch}x{k * gw * patch}" for k in range(1, 5))
        raise PretrainedError(
            f"the checkpoint's token mixing is sized for a {gh}x{gw} grid of {patch}-pixel patches "
            f"({gh * patch}x{gw * patch} images); {nh * patch}x{nw * patch} images give a {nh}x{nw} grid, which is "
            f"not a whole multiple of it per side, so the paper's block-diagonal initialisation cannot be used. "
            f"Resolutions that work: {options}, ... (any whole multiple per side)")
    return nh // gh, nw // gw


FAMILY_NAMES = {"mixer": "an MLP-Mixer", "resnet": "a CNN (ResNet)"}  # a config's "architecture", in words


def architecture_of(config: dict[str, Any]) -> str:
    """"mixer" or "resnet": the family of a model configuration (Mixer configs never had the key)."""
    return config.get("architecture", "mixer")


def adapt(params: dict[str, np.ndarray], config: dict[str, Any], num_classes: int | None = None,
          image_size: tuple[int, int] | None = None, path: Path | str = "checkpoint", keep_head: bool = False
          ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """Pre-trained parameters and configuration adapted for fine-tuning, for either family: a new zero head for
    ``num_classes`` (or, with ``keep_head``, the checkpoint's head, which must have that many classes), and, for a
    Mixer, the token mixing expanded for ``image_size`` (a CNN takes any size as it is: its convolutions slide and
    its features are a global average). Returns (params, config, notes): the notes say in words what was done."""
    params, config, notes = dict(params), dict(config), []
    old_size = config["image_size"]
    old_size = (old_size, old_size) if isinstance(old_size, int) else tuple(old_size)
    if image_size is not None and tuple(image_size) != old_size:
        new_size = tuple(image_size)
        if architecture_of(config) == "mixer":
            patch = config["patch_size"]
            if new_size[0] % patch or new_size[1] % patch:
                raise PretrainedError(f"{new_size[0]}x{new_size[1]} images do not tile into {patch}-pixel patches; "
                                      f"use a multiple of {patch}")
            old_grid, new_grid = (old_size[0] // patch, old_size[1] // patch), (new_size[0] // patch,
                                                                                 new_size[1] // patch)
            factor = grid_factor(old_grid, new_grid, patch)
            params = expand_token_mixing(params, old_grid, factor)
            config["tokens_mlp_dim"] = config["tokens_mlp_dim"] * factor[0] * factor[1]
            notes.append(f"token mixing expanded from {old_size[0]}x{old_size[1]} to {new_size[0]}x{new_size[1]} "
                         f"images: block-diagonal over {factor[0]}x{factor[1]} tiles (the paper's fine-tuning at a "
                         f"higher resolution)")
        else:
            notes.append(f"trained on {old_size[0]}x{old_size[1]} images, now {new_size[0]}x{new_size[1]} (the "
                         f"convolutions and the global average pool take any size; no weight changes)")
        config["image_size"] = new_size
    old_classes = config["num_classes"]
    if keep_head:
        if num_classes is not None and num_classes != old_classes:
            raise PretrainedError(f"its head has {old_classes} classes and the data {num_classes}: a head can be "
                                  f"kept only for the same classes (leave out the option to keep it, for a new one)")
        notes.append(f"the checkpoint's head kept ({old_classes} classes)")
    elif num_classes is not None:
        width = params["head/kernel"].shape[0]
        params["head/kernel"] = np.zeros((width, num_classes), params["head/kernel"].dtype)
        params["head/bias"] = np.zeros(num_classes, params["head/bias"].dtype)
        notes.append(f"a new zero-initialised head for {num_classes} classes (the checkpoint's has {old_classes}), "
                     f"as the official fine-tuning does")
        config["num_classes"] = num_classes
    return params, config, notes


def load_for_finetuning(path: Path | str, num_classes: int, image_size: tuple[int, int], dtype: str = "float32",
                        seed: int = 0, keep_head: bool = False, architecture: str | None = None
                        ) -> tuple[Any, list[str]]:
    """A model for fine-tuning from a checkpoint (official Mixer layout, or one written by this project, of either
    family): all weights loaded but the head, which is new and zero for ``num_classes`` (unless ``keep_head``),
    and a Mixer's token mixing expanded for ``image_size``. ``architecture`` ("mixer" or "resnet"), when given,
    is the family the caller trains: a checkpoint of the other family is a PretrainedError. Returns (model,
    notes)."""
    from ..nn.architectures import model_from_config
    from ..training.checkpoint import load_checkpoint, load_params_into, model_config

    params, _, meta = load_checkpoint(path)
    config = model_config(params, meta, path)
    held = architecture_of(config)
    if architecture is not None and held != architecture:
        raise FamilyError(f"it holds {FAMILY_NAMES.get(held, held)}, and this run trains "
                              f"{FAMILY_NAMES.get(architecture, architecture)}: weights cannot move between the "
                              f"two families (train the checkpoint's family, or start without it)", held)
    params, config, notes = adapt(params, config, num_classes, image_size, path, keep_head)
    model = model_from_config(config | {"dtype": dtype, "seed": seed})
    load_params_into(model, params, path)
    return model, notes
