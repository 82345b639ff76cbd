"""Composite blocks built from the primitives in ``layers.py``: the MLP block, token and channel mixing, and the
Mixer block. Each forward returns ``(out, cache)`` with its parts' caches nested inside; each backward calls its
parts' backwards in the reverse order and returns ``(dx, grads)``.

A block's ``params`` is a dict with the official checkpoint's names *relative to the block*, e.g.
``{"Dense_0/kernel": ..., "Dense_0/bias": ..., "Dense_1/kernel": ..., "Dense_1/bias": ...}`` for an MLP block;
its ``grads`` has the same keys and shapes. ``subtree`` and ``prefixed`` move between these and the model's flat
dict of full names such as ``MixerBlock_3/token_mixing/Dense_0/kernel``.

Training regularisers (off unless given): dropout after each MLP's GELU and stochastic depth on each residual
branch, with the random keep masks of a block passed in as a ``BlockMasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from .layers import (
    Array,
    _gelu_bias_forward,
    dense_backward,
    dense_forward,
    dropout_backward,
    dropout_forward,
    gelu_backward,
    layer_norm_backward,
    layer_norm_forward,
    stochastic_depth_backward,
    stochastic_depth_forward,
)
from .masks import KeepMask


def subtree(params: dict[str, Array], prefix: str) -> dict[str, Array]:
    """The entries under ``prefix/``, with the prefix removed: subtree(p, "MixerBlock_0")["LayerNorm_0/scale"]."""
    start = prefix + "/"
    return {name[len(start) :]: value for name, value in params.items() if name.startswith(start)}


def prefixed(grads: dict[str, Array], prefix: str) -> dict[str, Array]:
    """The inverse of ``subtree``: put ``prefix/`` in front of every name."""
    return {f"{prefix}/{name}": value for name, value in grads.items()}


# ----------------------------------------------------------------------------------------------------------------
# The random keep masks of one Mixer block's training pass


@dataclass(frozen=True)
class BlockMasks:
    """The keep masks of one Mixer block (True: kept) and the rates they were drawn with; a mask is None where its
    regulariser is off. Every mask has the batch axis first, so that ``rows`` cuts out a part of the batch. A mask
    is a ``KeepMask`` (a rule, computed by the layer that uses it, on its device: ``masks.py``) or an array (given
    by hand).

    - ``token_dropout`` (B, D_S, C): dropout after the token-mixing MLP's GELU (its hidden layer, in the (B, D_S, C)
      layout that token mixing computes in); ``channel_dropout`` (B, S, D_C): after the channel-mixing GELU.
      Both with rate ``dropout``.
    - ``token_depth``, ``channel_depth`` (B,): stochastic depth of the two residual branches, with rate ``depth``
      (drawn independently: an image may skip one branch of a block and keep the other).
    """

    dropout: float = 0.0
    token_dropout: Any = None
    channel_dropout: Any = None
    depth: float = 0.0
    token_depth: Any = None
    channel_depth: Any = None

    def arrays(self) -> dict[str, Any]:
        """The masks that are on, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name.endswith(("_dropout", "_depth")) and getattr(self, f.name) is not None}

    def rows(self, index: Any) -> BlockMasks:
        """The masks of some of the batch's images (a shard, a process's share, an accumulation part): ``index``
        is a slice (or, for masks given as arrays, an array of image indices)."""
        return replace(self, **{name: mask[index] for name, mask in self.arrays().items()})


def draw_block_masks(rng: np.random.Generator, batch: int, num_tokens: int, hidden_dim: int, tokens_mlp_dim: int,
                     channels_mlp_dim: int, dropout: float, depth: float) -> BlockMasks:
    """One block's masks for a batch of ``batch`` images, their keys drawn from ``rng`` in the forward's order
    (token dropout, token depth, channel dropout, channel depth; nothing is drawn for a rate of 0)."""
    s, c = num_tokens, hidden_dim
    token_dropout = KeepMask.draw(rng, (batch, tokens_mlp_dim, c), dropout) if dropout else None  # (B, D_S, C)
    token_depth = KeepMask.draw(rng, (batch,), depth) if depth else None  # (B,)
    channel_dropout = KeepMask.draw(rng, (batch, s, channels_mlp_dim), dropout) if dropout else None  # (B, S, D_C)
    channel_depth = KeepMask.draw(rng, (batch,), depth) if depth else None  # (B,)
    return BlockMasks(dropout, token_dropout, channel_dropout, depth, token_depth, channel_depth)


def masks_rows(masks: list[BlockMasks] | None, index: Any) -> list[BlockMasks] | None:
    """Every block's masks cut to some of the batch's images (None stays None: no regulariser)."""
    return None if masks is None else [m.rows(index) for m in masks]


NO_MASKS = BlockMasks()


# ----------------------------------------------------------------------------------------------------------------
# MLP block: Dense -> GELU -> Dense on the last axis (the paper's MLP with one hidden layer)


def mlp_block_forward(x: Array, params: dict[str, Array], gelu: str = "tanh", train: bool = True, axis: int = -1,
                      dropout: tuple[float, Array] | None = None) -> tuple[Array, tuple]:
    """``out = W2 . GELU(W1 . x + b1) + b2`` applied along one axis of x: the last (``axis=-1``) or the one
    before it (``axis=-2``, see ``dense_forward``).

    Inputs: x (..., D) (or (..., D, C) for ``axis=-2``), params ``Dense_0/kernel`` (D, D_hidden),
    ``Dense_0/bias``, ``Dense_1/kernel`` (D_hidden, D), ``Dense_1/bias``; ``dropout`` = (rate, keep mask of the
    hidden layer's shape) applies dropout after the GELU, ``W2 . Dropout(GELU(...)) + b2`` (where big_vision's
    ViT MLP block has it; None: none).  Returns out (x's shape) and the cache.
    """
    b1 = params["Dense_0/bias"] if axis == -1 else params["Dense_0/bias"][:, None]  # along the hidden axis
    pre, dense0_cache = dense_forward(x, params["Dense_0/kernel"], None, axis)  # 1. bias added in 2.
    hidden, gelu_cache = _gelu_bias_forward(pre, b1, gelu, train=train, out=pre)  # 2. in pre's memory
    dropout_cache = None
    if dropout is not None:  # 2b. in hidden's memory: the undropped GELU output has no other reader
        hidden, dropout_cache = dropout_forward(hidden, *dropout, out=hidden)
    out, dense1_cache = dense_forward(hidden, params["Dense_1/kernel"], params["Dense_1/bias"], axis)  # 3.
    # The cache keeps two hidden-size arrays, the largest activations of the model: `hidden` (for dW2) and
    # GELU's local derivative; the pre-activation itself is not needed any more, so `hidden` takes its memory
    # (writing into memory just read is cheaper than into fresh memory: -15% for GELU here). Dropout adds its
    # bool mask (a quarter of a float32 hidden array).
    return out, (dense0_cache, gelu_cache, dropout_cache, dense1_cache)


def mlp_block_backward(dout: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
    """Returns dx (x's shape) and the grads of the four parameters."""
    dense0_cache, gelu_cache, dropout_cache, dense1_cache = cache
    dhidden, dw2, db2 = dense_backward(dout, dense1_cache)  # undoes 3.
    if dropout_cache is not None:
        dhidden = dropout_backward(dhidden, dropout_cache, out=dhidden)  # undoes 2b., in place
    dpre = gelu_backward(dhidden, gelu_cache, out=dhidden)  # undoes 2., in dhidden's memory
    dx, dw1, db1 = dense_backward(dpre, dense0_cache)  # undoes 1. (db1 is Dense_0's bias, added in 2.)
    grads = {"Dense_0/kernel": dw1, "Dense_0/bias": db1, "Dense_1/kernel": dw2, "Dense_1/bias": db2}
    return dx, grads


# ----------------------------------------------------------------------------------------------------------------
# Token mixing and channel mixing: the same MLP block, applied along two different axes of the (B, S, C) table


def token_mixing_forward(x: Array, params: dict[str, Array], gelu: str = "tanh", train: bool = True,
                         dropout: tuple[float, Array] | None = None) -> tuple[Array, tuple]:
    """The MLP applied across tokens, once per channel, with weights shared over the channels:

        out[b, :, c] = W2 . GELU(W1 . x[b, :, c])       (the paper's  U_{*,i} = W2 s(W1 X_{*,i}))

    Inputs: x (B, S, C), params with ``Dense_0/kernel`` (S, D_S), ``Dense_1/kernel`` (D_S, S).
    Returns out (B, S, C) and the cache. The official code swaps the token and channel axes and applies the MLP
    to the last axis; here the MLP is applied to axis -2 directly (``W1^T @ x[b]`` for each image b), which
    computes the same numbers without copying the table into (B, C, S) order and back. ``dropout``: (rate, keep
    mask (B, D_S, C)) after the GELU, or None.
    """
    return mlp_block_forward(x, params, gelu, train, axis=-2, dropout=dropout)


def token_mixing_backward(dout: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
    return mlp_block_backward(dout, cache)


def channel_mixing_forward(x: Array, params: dict[str, Array], gelu: str = "tanh", train: bool = True,
                           dropout: tuple[float, Array] | None = None) -> tuple[Array, tuple]:
    """The MLP applied across channels, once per token, with weights shared over the tokens:

        out[b, s, :] = W4 . GELU(W3 . x[b, s, :])       (the paper's  Y_{j,*} = W4 s(W3 U_{j,*}))

    Inputs: x (B, S, C), params with ``Dense_0/kernel`` (C, D_C), ``Dense_1/kernel`` (D_C, C); ``dropout``:
    (rate, keep mask (B, S, D_C)) after the GELU, or None.
    """
    return mlp_block_forward(x, params, gelu, train, axis=-1, dropout=dropout)


def channel_mixing_backward(dout: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
    return mlp_block_backward(dout, cache)


# ----------------------------------------------------------------------------------------------------------------
# The Mixer block: two pre-LayerNorm residual branches


def mixer_block_forward(x: Array, params: dict[str, Array], gelu: str = "tanh", train: bool = True,
                        masks: BlockMasks | None = None) -> tuple[Array, tuple]:
    """One Mixer layer (paper eq. 1):

        U = X + TokenMixing(LayerNorm_0(X))            token-mixing branch
        Y = U + ChannelMixing(LayerNorm_1(U))          channel-mixing branch

    Inputs: x (B, S, C); params named as in a ``MixerBlock_i`` of the official checkpoints: ``LayerNorm_0/*``,
    ``token_mixing/Dense_{0,1}/*``, ``LayerNorm_1/*``, ``channel_mixing/Dense_{0,1}/*``; ``masks`` (a training
    pass with regularisers, else None): dropout inside each MLP and stochastic depth on each branch,
    ``U = X + m_b / (1 - p) * TokenMixing(...)`` with m_b in {0, 1} per image b (likewise for Y).  Returns y
    (B, S, C) and the cache (``train=False``: an evaluation pass, whose cache cannot be used for a backward).
    """
    m = masks or NO_MASKS
    token_dropout = None if m.token_dropout is None else (m.dropout, m.token_dropout)
    channel_dropout = None if m.channel_dropout is None else (m.dropout, m.channel_dropout)
    y, ln0_cache = layer_norm_forward(x, params["LayerNorm_0/scale"], params["LayerNorm_0/bias"], train=train)  # 1.
    y, token_cache = token_mixing_forward(y, subtree(params, "token_mixing"), gelu, train, token_dropout)  # 2.
    token_depth_cache = None
    if m.token_depth is not None:  # 2b. stochastic depth with the residual sum 3., in the branch output's memory
        u, token_depth_cache = stochastic_depth_forward(y, m.depth, m.token_depth, out=y, residual=x)
    else:
        u = y
        u += x  # 3. residual (B, S, C), in the branch output's memory
    y, ln1_cache = layer_norm_forward(u, params["LayerNorm_1/scale"], params["LayerNorm_1/bias"], train=train)  # 4.
    y, channel_cache = channel_mixing_forward(y, subtree(params, "channel_mixing"), gelu, train, channel_dropout)  # 5.
    channel_depth_cache = None
    if m.channel_depth is not None:  # 5b. with the residual sum 6. (B, S, C)
        y, channel_depth_cache = stochastic_depth_forward(y, m.depth, m.channel_depth, out=y, residual=u)
    else:
        y += u  # 6. residual (B, S, C)
    return y, (ln0_cache, token_cache, token_depth_cache, ln1_cache, channel_cache, channel_depth_cache)


def mixer_block_backward(dout: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
    """Returns dx (B, S, C) and the grads of every parameter of the block (same names as its params)."""
    ln0_cache, token_cache, token_depth_cache, ln1_cache, channel_cache, channel_depth_cache = cache
    # 6. y = u + branch: the gradient reaches u both directly and through the branch
    dy = dout if channel_depth_cache is None else stochastic_depth_backward(dout, channel_depth_cache)  # undoes 5b.
    dy, channel_grads = channel_mixing_backward(dy, channel_cache)  # undoes 5.
    du, dscale1, dbias1 = layer_norm_backward(dy, ln1_cache, out=dy, residual=dout)  # undoes 4., in dy's memory,
    # with the residual path of 6. added: du = dLN + dout
    # 3. u = x + branch: the same story again
    dy = du if token_depth_cache is None else stochastic_depth_backward(du, token_depth_cache)  # undoes 2b.
    dy, token_grads = token_mixing_backward(dy, token_cache)  # undoes 2.
    dx, dscale0, dbias0 = layer_norm_backward(dy, ln0_cache, out=dy, residual=du)  # undoes 1., with 3.'s
    # residual path: dx = dLN + du
    grads: dict[str, Any] = {"LayerNorm_0/scale": dscale0, "LayerNorm_0/bias": dbias0}
    grads.update(prefixed(token_grads, "token_mixing"))
    grads.update({"LayerNorm_1/scale": dscale1, "LayerNorm_1/bias": dbias1})
    grads.update(prefixed(channel_grads, "channel_mixing"))
    return dx, grads
