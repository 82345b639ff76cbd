"""Fixed permutations of the input pixels, and the Mixer weights that undo them (the paper's section 3.4, Fig. 4).

A permutation here moves whole pixels (all channels of a pixel together) and is the same for every image. It is
stored as a gather index over the H*W pixel positions in row-major order::

    permuted.reshape(B, H*W, C)[:, i] = images.reshape(B, H*W, C)[:, order[i]]      i.e.  x'_i = x_{order[i]}

Two kinds, as in the paper:

* **patch + pixel** (``patch_and_pixel_permutation``): the image is cut into S = (H/P)(W/P) patches of P x P pixels
  (row-major over the patch grid, as ``tinymixer.nn.conv.patchify`` does). Patch s of the permuted image is patch
  ``token_order[s]`` of the original, and inside every patch pixel q is pixel ``pixel_order[q]`` of the original
  patch (q row-major over the P x P pixels)::

      x'[s, q] = x[token_order[s], pixel_order[q]]

  A Mixer with patch size P is *equivariant* to this: with its weights permuted (``permute_mixer_params``) it
  computes on x' exactly what the original computes on x.
* **global** (``global_pixel_permutation``): one permutation of all H*W pixels. It scatters every patch over the
  image, so no reparametrisation of a Mixer (or a CNN) undoes it.

Why the patch + pixel permutation is a change of coordinates for a Mixer, with t = token_order, p = pixel_order:

* stem: ``y_s = sum_q x[s, q] W[q] + b`` (W the stem kernel (P, P, C_in, C) as rows q = (row, col) of the patch,
  each row a (C_in, C) block). With ``W'[q] = W[p(q)]``: ``y'_s = sum_q x[t(s), p(q)] W[p(q)] + b = y_{t(s)}``:
  the stem's output tokens come out permuted by t, their channels untouched.
* LayerNorm and channel mixing act on each token alone: they commute with a permutation of the tokens.
* token mixing, for each channel c: ``h_j = sum_s K0[s, j] u[s, c] + b0_j``, ``v_s = sum_j g(h_j) K1[j, s] + b1_s``.
  With ``K0'[s, j] = K0[t(s), j]`` the hidden units see the same sum (in another order): ``h'_j = h_j``; with
  ``K1'[j, s] = K1[j, t(s)]`` and ``b1'_s = b1_{t(s)}`` the outputs are ``v'_s = v_{t(s)}``: permuted by t again.
* the mean over the tokens before the head does not depend on their order: the logits are equal.

Since the map from W to W' is a fixed permutation of coordinates (linear, orthogonal), the gradients transform the
same way, their global norm is the same (so is the clipping), and SGD with momentum from permuted weights on
permuted images follows the permuted trajectory: training on shuffled data *is* training the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..nn.conv import patchify, unpatchify
from ..nn.mixer import permuted_params


@dataclass(frozen=True)
class PixelPermutation:
    """A fixed permutation of the pixel positions of (H, W) images: ``order`` (H*W,) gathers, as the module says.

    ``token_order`` and ``pixel_order`` (and ``patch_size``) are set for a patch + pixel permutation, None for a
    global one."""

    image_hw: tuple[int, int]
    order: np.ndarray  # (H*W,) int: new flat position i takes the pixel at old flat position order[i]
    patch_size: int | None = None
    token_order: np.ndarray | None = None  # (S,)
    pixel_order: np.ndarray | None = None  # (P*P,)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return permute_images(images, self.order)

    def inverse(self) -> PixelPermutation:
        """The permutation that undoes this one (a plain pixel permutation: no patch structure is kept)."""
        return PixelPermutation(self.image_hw, inverse_order(self.order))


def patch_and_pixel_permutation(image_hw: tuple[int, int], patch_size: int, seed: int) -> PixelPermutation:
    """A random permutation of the patch order and one of the pixels inside a patch (the same for every patch):
    ``x'[s, q] = x[token_order[s], pixel_order[q]]``, drawn from ``np.random.default_rng(seed)``."""
    h, w = image_hw
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patch size {p} does not tile {h}x{w} images")
    rng = np.random.default_rng(seed)
    num_tokens, pixels = (h // p) * (w // p), p * p
    token_order, pixel_order = rng.permutation(num_tokens), rng.permutation(pixels)  # (S,), (P*P,)
    positions = np.arange(h * w).reshape(1, h, w, 1)  # each pixel's own flat index, as an "image"
    patches = patchify(positions, p).reshape(num_tokens, pixels)  # (S, P*P): flat index of pixel q of patch s
    moved = patches[token_order][:, pixel_order]  # (S, P*P): x'[s, q] = x[t(s), p(q)]
    order = unpatchify(moved.reshape(1, num_tokens, pixels), p, (h, w)).reshape(h * w)  # (H*W,)
    return PixelPermutation((h, w), order, p, token_order, pixel_order)


def global_pixel_permutation(image_hw: tuple[int, int], seed: int) -> PixelPermutation:
    """A random permutation of all H*W pixel positions (channels move with their pixel)."""
    h, w = image_hw
    return PixelPermutation((h, w), np.random.default_rng(seed).permutation(h * w))


def permute_images(images: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``images`` (B, H, W, C) (any dtype, uint8 batches included) with their pixels gathered by ``order`` (H*W,):
    ``out[:, i] = images[:, order[i]]`` over flat positions. Returns a new array."""
    b, h, w, c = images.shape
    if order.shape != (h * w,):
        raise ValueError(f"a permutation of {order.size} pixels cannot permute {h}x{w} images")
    return images.reshape(b, h * w, c)[:, order].reshape(b, h, w, c)


def inverse_order(order: np.ndarray) -> np.ndarray:
    """The gather index that undoes ``order``: ``permute_images(permute_images(x, order), inverse) == x``."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return inverse


def is_permutation(order: np.ndarray) -> bool:
    """Whether ``order`` is a bijection of 0..n-1 (every index exactly once)."""
    order = np.asarray(order)
    return order.ndim == 1 and np.array_equal(np.sort(order), np.arange(order.size))


def permute_mixer_params(params: dict[str, Any], permutation: PixelPermutation) -> dict[str, Any]:
    """A Mixer's parameters in the permuted coordinates of a patch + pixel ``permutation`` (module docstring): the
    model with these weights gives on permuted images exactly the logits the original gives on the originals
    (the weights' side of it: ``nn.mixer.permuted_params``). Returns a new dict of new arrays (NumPy or CuPy)."""
    if permutation.token_order is None or permutation.pixel_order is None:
        raise ValueError("only a patch + pixel permutation can be undone by a Mixer's weights (a global pixel "
                         "permutation breaks the patches)")
    p = params["stem/kernel"].shape[0]
    if p != permutation.patch_size:
        raise ValueError(f"the permutation is for patches of {permutation.patch_size}, the model's are {p}")
    return permuted_params(params, permutation.token_order, permutation.pixel_order)
