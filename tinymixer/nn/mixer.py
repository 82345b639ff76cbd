"""The MLP-Mixer model: stem -> N Mixer blocks -> LayerNorm -> mean over tokens -> head.

``MlpMixer.params`` is a flat dict whose names and shapes are those of the official JAX checkpoints, so a
checkpoint's arrays drop straight in. ``forward`` keeps the caches of a training pass; ``backward`` walks the same
path in reverse and fills ``grads`` (same names, same shapes). Training regularisers (dropout, stochastic depth)
are off unless the constructor's rates say otherwise; their random masks come from a generator the training loop
passes to ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import array_module
from ..util.numbers import is_whole
from .blocks import (
    BlockMasks,
    draw_block_masks,
    mixer_block_backward,
    mixer_block_forward,
    prefixed,
    subtree,
)
from .conv import stem_backward, stem_forward
from .layers import (
    GELU_FORMS,
    Array,
    layer_norm_backward,
    layer_norm_forward,
    mean_pool_backward,
    mean_pool_forward,
)
from .network import Network, count_params, image_hw, lecun_normal


@dataclass(frozen=True)
class MixerSize:
    """The shape hyper-parameters of one named size (paper Table 1, plus small ones for 32x32 images)."""

    num_blocks: int
    patch_size: int
    hidden_dim: int  # C, channels per token
    tokens_mlp_dim: int  # D_S
    channels_mlp_dim: int  # D_C


# Paper Table 1 (the "/P" is the patch size), then sizes for 32x32 images (CIFAR) that a CPU trains in minutes.
SIZES: dict[str, MixerSize] = {
    "S/32": MixerSize(8, 32, 512, 256, 2048),
    "S/16": MixerSize(8, 16, 512, 256, 2048),
    "B/32": MixerSize(12, 32, 768, 384, 3072),
    "B/16": MixerSize(12, 16, 768, 384, 3072),
    "L/32": MixerSize(24, 32, 1024, 512, 4096),
    "L/16": MixerSize(24, 16, 1024, 512, 4096),
    "H/14": MixerSize(32, 14, 1280, 640, 5120),
    "S/8": MixerSize(8, 8, 512, 256, 2048),  # not in Table 1: the official GSAM checkpoints include it
    "micro/4": MixerSize(4, 4, 64, 32, 256),
    "tiny/4": MixerSize(8, 4, 128, 64, 512),  # the layer sizes of the "Mixer-nano" of public CIFAR-10 code
    "small/4": MixerSize(8, 4, 256, 128, 1024),
}


def param_shapes(num_blocks: int, patch_size: int, hidden_dim: int, tokens_mlp_dim: int, channels_mlp_dim: int,
                 num_tokens: int, in_channels: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape in the official checkpoint layout, in forward order."""
    p, c, s = patch_size, hidden_dim, num_tokens
    shapes: dict[str, tuple[int, ...]] = {"stem/kernel": (p, p, in_channels, c), "stem/bias": (c,)}
    for i in range(num_blocks):
        block = {
            "LayerNorm_0/scale": (c,), "LayerNorm_0/bias": (c,),
            "token_mixing/Dense_0/kernel": (s, tokens_mlp_dim), "token_mixing/Dense_0/bias": (tokens_mlp_dim,),
            "token_mixing/Dense_1/kernel": (tokens_mlp_dim, s), "token_mixing/Dense_1/bias": (s,),
            "LayerNorm_1/scale": (c,), "LayerNorm_1/bias": (c,),
            "channel_mixing/Dense_0/kernel": (c, channels_mlp_dim), "channel_mixing/Dense_0/bias": (channels_mlp_dim,),
            "channel_mixing/Dense_1/kernel": (channels_mlp_dim, c), "channel_mixing/Dense_1/bias": (c,),
        }
        shapes.update(prefixed(block, f"MixerBlock_{i}"))
    shapes.update({"pre_head_layer_norm/scale": (c,), "pre_head_layer_norm/bias": (c,),
                   "head/kernel": (c, num_classes), "head/bias": (num_classes,)})
    return shapes


def sizes_from_params(params: Mapping[str, Any]) -> dict[str, int]:
    """A Mixer's sizes read off its parameters in the official layout, checked against ``param_shapes``: every
    official name present with its exact shape, and nothing else. Returns ``num_blocks``, ``patch_size``,
    ``hidden_dim``, ``tokens_mlp_dim``, ``channels_mlp_dim``, ``num_tokens``, ``in_channels``, ``num_classes``.
    Raises ValueError saying what is missing, extra or of the wrong shape (callers say what the file is)."""
    required = ["stem/kernel", "MixerBlock_0/token_mixing/Dense_0/kernel",
                "MixerBlock_0/channel_mixing/Dense_0/kernel", "head/kernel"]
    missing = [k for k in required if k not in params]
    if missing:
        found = ", ".join(list(params)[:4]) + (", ..." if len(params) > 4 else "")
        raise ValueError(f"no {missing[0]!r} (found {found or 'nothing'})")
    for name in required[1:]:
        if len(np.shape(params[name])) != 2:
            raise ValueError(f"{name} has shape {np.shape(params[name])}; the official layout's is 2-D")
    stem = np.shape(params["stem/kernel"])
    if len(stem) != 4 or stem[0] != stem[1]:
        raise ValueError(f"stem/kernel has shape {stem}; the official layout is (P, P, C_in, C)")
    num_tokens, tokens_mlp_dim = np.shape(params["MixerBlock_0/token_mixing/Dense_0/kernel"])
    config = {"num_blocks": len({k.split("/")[0] for k in params if k.startswith("MixerBlock_")}),
              "patch_size": stem[0], "hidden_dim": stem[3], "tokens_mlp_dim": tokens_mlp_dim,
              "channels_mlp_dim": np.shape(params["MixerBlock_0/channel_mixing/Dense_0/kernel"])[1],
              "num_tokens": num_tokens, "in_channels": stem[2], "num_classes": np.shape(params["head/kernel"])[-1]}
    config = {k: int(v) for k, v in config.items()}
    expected = param_shapes(**config)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    wrong = [f"{k} {tuple(np.shape(params[k]))} (expected {v})" for k, v in expected.items()
             if k in params and tuple(np.shape(params[k])) != v]
    if missing or extra or wrong:
        problems = [f"{what} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                    for what, names in [("missing", missing), ("unexpected", extra), ("wrong shape:", wrong)] if names]
        raise ValueError("; ".join(problems))
    return config


def forward_flops(num_blocks: int, patch_size: int, hidden_dim: int, tokens_mlp_dim: int, channels_mlp_dim: int,
                  num_tokens: int, in_channels: int, num_classes: int) -> int:
    """2 x the multiply-adds of one image's forward matrix multiplies: stem, 2 token and 2 channel GEMMs per block,
    head."""
    s, c, p = num_tokens, hidden_dim, patch_size
    stem = s * (p * p * in_channels) * c
    block = 2 * c * s * tokens_mlp_dim + 2 * s * c * channels_mlp_dim
    return 2 * (stem + num_blocks * block + c * num_classes)


def describe_size(name: str, num_classes: int = 1000, image_size: int | tuple[int, int] = 224,
                  in_channels: int = 3) -> dict[str, int]:
    """Parameter counts and forward FLOPs of a named size, from shapes alone (no weights are allocated, so even
    H/14 costs nothing): {"params", "params_without_head", "num_tokens", "flops"}."""
    if name not in SIZES:
        family = " (a CNN size: make_model(name, ...).num_params() counts it)" if name.startswith("cnn") else ""
        raise ValueError(f"unknown Mixer size {name!r}{family}; the sizes: {', '.join(SIZES)}")
    size = SIZES[name]
    h, w = image_hw(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be at least 1, got {h}x{w}")
    if h % size.patch_size or w % size.patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by {name}'s patch size {size.patch_size}")
    config = vars(size) | {"num_tokens": (h // size.patch_size) * (w // size.patch_size), "in_channels": in_channels,
                           "num_classes": num_classes}
    shapes = param_shapes(**config)
    return {"params": count_params(shapes), "params_without_head": count_params(shapes, include_head=False),
            "num_tokens": config["num_tokens"], "flops": forward_flops(**config)}


class MlpMixer(Network):
    """MLP-Mixer (Tolstikhin et al. 2021) with hand-written forward and backward passes.

    Keywords as in the official code: ``num_classes``, ``num_blocks``, ``patch_size``, ``hidden_dim`` (C),
    ``tokens_mlp_dim`` (D_S), ``channels_mlp_dim`` (D_C); plus ``image_size`` (int or (H, W)), ``in_channels``,
    ``seed`` (the same seed gives the same weights on every backend), ``dtype`` ("float32" or "float64"), ``gelu``
    ("tanh", the official model's, or "erf"); and two training regularisers, both off by default: ``dropout``
    (rate of dropout after the GELU of every MLP, token and channel mixing) and ``stochastic_depth`` (the drop rate
    of the last block's residual branches; block i of N drops each branch of an image with rate
    ``stochastic_depth * i / (N - 1)``, as big_vision's Mixer: 0 for the first block). Both use inverted scaling
    (kept values times 1 / (1 - rate)) and act only in training passes (``forward(..., train=True, rng=...)``).

    Images go in as (B, H, W, in_channels) floats, preferably scaled to [-1, 1] as the official input pipeline
    does; logits come out as (B, num_classes).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_blocks: int,
        patch_size: int,
        hidden_dim: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        image_size: int | tuple[int, int] = 224,
        in_channels: int = 3,
        seed: int = 0,
        dtype: str | Any = "float32",
        gelu: str = "tanh",
        dropout: float = 0.0,
        stochastic_depth: float = 0.0,
    ) -> None:
        h, w = image_hw(image_size)
        for name, value in [("num_classes", num_classes), ("num_blocks", num_blocks), ("patch_size", patch_size),
                            ("hidden_dim", hidden_dim), ("tokens_mlp_dim", tokens_mlp_dim),
                            ("channels_mlp_dim", channels_mlp_dim), ("image height", h), ("image width", w),
                            ("in_channels", in_channels)]:
            if not is_whole(value, 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the patch size {patch_size}: the patches must tile the "
                f"image exactly. Choose an image size that is a multiple of {patch_size} (e.g. "
                f"{(h // patch_size or 1) * patch_size}), or another patch size."
            )
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if gelu not in GELU_FORMS:
            raise ValueError(f"gelu must be one of {GELU_FORMS}, got {gelu!r}")
        for name, rate in [("dropout", dropout), ("stochastic_depth", stochastic_depth)]:
            is_number = isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, bool)
            if not (is_number and 0.0 <= rate < 1.0):
                raise ValueError(f"{name} must be a rate in [0, 1), got {rate!r}")
        self.num_classes = num_classes
        self.num_blocks = num_blocks
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.tokens_mlp_dim = tokens_mlp_dim
        self.channels_mlp_dim = channels_mlp_dim
        self.image_size = (h, w)
        self.in_channels = in_channels
        self.num_tokens = (h // patch_size) * (w // patch_size)  # S
        self.gelu = gelu
        self.dropout = float(dropout)
        self.stochastic_depth = float(stochastic_depth)
        self._initialise(seed)

    @classmethod
    def from_name(cls, name: str, *, num_classes: int, image_size: int | tuple[int, int] = 224,
                  **kwargs: Any) -> MlpMixer:
        """A named size, e.g. ``MlpMixer.from_name("B/16", num_classes=1000, image_size=224)``; keywords of the
        constructor (``patch_size`` too) override the size's own values."""
        if name not in SIZES:
            raise ValueError(f"unknown size {name!r}; known sizes: {', '.join(SIZES)}")
        size = vars(SIZES[name]) | kwargs
        return cls(num_classes=num_classes, image_size=image_size, **size)

    def config(self) -> dict[str, Any]:
        """The constructor keywords that rebuild this model (saved in checkpoints): MlpMixer(**config). The
        regularisers' rates appear only when non-zero, so that a model without them has the config it had before
        they existed (and a config without them, an older checkpoint's, builds a model without them)."""
        config = {"num_classes": self.num_classes, "num_blocks": self.num_blocks, "patch_size": self.patch_size,
                  "hidden_dim": self.hidden_dim, "tokens_mlp_dim": self.tokens_mlp_dim,
                  "channels_mlp_dim": self.channels_mlp_dim, "image_size": list(self.image_size),
                  "in_channels": self.in_channels, "gelu": self.gelu, "dtype": self.dtype.name}
        for name in ("dropout", "stochastic_depth"):
            if getattr(self, name):
                config[name] = getattr(self, name)
        return config

    def describe(self) -> str:
        blocks = f"{self.num_blocks} block{'s' if self.num_blocks != 1 else ''}"
        return f"MLP-Mixer of {blocks}, patch {self.patch_size} ({self.num_tokens} tokens), C {self.hidden_dim}"

    # ------------------------------------------------------------------------------------------------------------
    # Parameters

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in the official checkpoint layout, in forward order."""
        return param_shapes(self.num_blocks, self.patch_size, self.hidden_dim, self.tokens_mlp_dim,
                            self.channels_mlp_dim, self.num_tokens, self.in_channels, self.num_classes)

    def init_kernel(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """The official initialiser: LeCun-normal for every Dense and the stem's conv kernel, fan-in = all axes
        but the last. (Zero biases, LayerNorm scales one and a zero head: ``Network.init_params``.)"""
        return lecun_normal(rng, shape, fan_in=math.prod(shape[:-1]))

    def flops_per_image(self) -> int:
        """Multiply-adds x 2 of the forward pass's matrix multiplies (the elementwise work is a few percent).
        A training step (forward + backward) costs about three times this."""
        return forward_flops(self.num_blocks, self.patch_size, self.hidden_dim, self.tokens_mlp_dim,
                             self.channels_mlp_dim, self.num_tokens, self.in_channels, self.num_classes)

    # ------------------------------------------------------------------------------------------------------------
    # Training regularisers: their rates per block, and their random masks

    @property
    def regularized(self) -> bool:
        """Whether training passes use dropout or stochastic depth (and so need masks)."""
        return bool(self.dropout or self.stochastic_depth)

    def block_rates(self) -> list[tuple[float, float]]:
        """(dropout rate, stochastic-depth rate) of every block: dropout the same everywhere, stochastic depth
        rising linearly with depth from 0 at the first block to ``stochastic_depth`` at the last (big_vision's
        Mixer: ``rate_i = stochastic_depth * i / max(N - 1, 1)``)."""
        last = max(self.num_blocks - 1, 1)
        return [(self.dropout, self.stochastic_depth * i / last) for i in range(self.num_blocks)]

    def draw_masks(self, rng: Any, batch_size: int) -> list[BlockMasks] | None:
        """The keep masks of one training pass over ``batch_size`` images, one ``BlockMasks`` per block, or None
        when no regulariser is on (then nothing is drawn: ``rng`` is left as it was).

        ``rng``: a NumPy Generator, or a seed for one (e.g. ``[run_seed, epoch, step]``). Each mask is a rule
        (``masks.KeepMask``: two keys drawn on the host, block by block in forward order) for the whole batch,
        whatever the threads, shards, processes or devices that will run it: a part of the batch takes its rows
        (``blocks.masks_rows(masks, rows)``) and computes only those, where it runs; a run resumed at a step
        draws that step's masks again."""
        if not self.regularized:
            return None
        rng = np.random.default_rng(rng)  # a Generator is returned as it is
        shape = (self.num_tokens, self.hidden_dim, self.tokens_mlp_dim, self.channels_mlp_dim)
        return [draw_block_masks(rng, batch_size, *shape, dropout, depth) for dropout, depth in self.block_rates()]

    def _training_masks(self, batch: int, train: bool, rng: Any, masks: list[BlockMasks] | None
                        ) -> list[BlockMasks] | None:
        """The masks a forward pass uses, on the model's device: None in evaluation passes and without
        regularisers (the plain network, bit for bit), else ``masks`` as given (checked) or drawn from ``rng``."""
        if not train or not self.regularized:
            return None
        if masks is None:
            if rng is None:
                raise ValueError(
                    f"this model trains with dropout {self.dropout} and stochastic depth {self.stochastic_depth}: "
                    f"a training forward needs rng= (a NumPy Generator or a seed such as [run_seed, epoch, step]) "
                    f"or masks= (from draw_masks), so that its random masks can be drawn again; an evaluation "
                    f"pass is forward(images, train=False)")
            masks = self.draw_masks(rng, batch)
        self._check_masks(masks, batch)
        return masks  # computed block by block where the block runs (blocks.BlockMasks.on): nothing moved here

    def _check_masks(self, masks: list[BlockMasks], batch: int) -> None:
        """Masks given by hand must be this model's: one per block, drawn with its rates, shaped for the batch."""
        if len(masks) != self.num_blocks:
            raise ValueError(f"masks for {len(masks)} blocks given to a model of {self.num_blocks}")
        s, c, d_s, d_c = self.num_tokens, self.hidden_dim, self.tokens_mlp_dim, self.channels_mlp_dim
        for i, (m, (dropout, depth)) in enumerate(zip(masks, self.block_rates(), strict=True)):
            if (m.dropout, m.depth) != (dropout, depth):
                raise ValueError(f"block {i}'s masks were drawn with rates (dropout {m.dropout}, depth {m.depth}); "
                                 f"the model's are ({dropout}, {depth})")
            expected = {"token_dropout": (batch, d_s, c), "channel_dropout": (batch, s, d_c),
                        "token_depth": (batch,), "channel_depth": (batch,)}
            wanted = {k: v for k, v in expected.items() if (dropout if k.endswith("_dropout") else depth)}
            got = {k: tuple(v.shape) for k, v in m.arrays().items()}
            if got != wanted:
                raise ValueError(f"block {i}'s masks have shapes {got}; a batch of {batch} needs {wanted}")

    # ------------------------------------------------------------------------------------------------------------
    # Forward and backward

    def _features_shard(self, x: Array, train: bool, masks: list[BlockMasks] | None = None
                        ) -> tuple[Array, tuple | None]:
        """Steps 1.-4. of the network, everything before the head: the pre-logits (B, C) of one batch (or shard),
        and the caches of these steps (stem, blocks, LayerNorm, pool) when ``train``. ``masks``: the shard's
        regulariser masks, one ``BlockMasks`` per block (None: none)."""
        p = self.params
        x, stem_cache = stem_forward(x, p["stem/kernel"], p["stem/bias"])  # 1. (B, S, C)
        block_caches = []
        for i in range(self.num_blocks):
            m = None if masks is None else masks[i]  # block i's dropout and stochastic-depth masks
            x, cache = mixer_block_forward(x, subtree(p, f"MixerBlock_{i}"), self.gelu, train, m)  # 2. (B, S, C)
            if train:
                block_caches.append(cache)
        x, ln_cache = layer_norm_forward(x, p["pre_head_layer_norm/scale"], p["pre_head_layer_norm/bias"],
                                         train=train)  # 3.
        x, pool_cache = mean_pool_forward(x)  # 4. (B, C)
        return x, ((stem_cache, block_caches, ln_cache, pool_cache) if train else None)

    def _features_backward(self, dfeatures: Array, cache: tuple, grads: dict[str, Array]) -> Array:
        """Backward through steps 4.-1. (``_features_shard``'s caches): fills ``grads``, returns dL/dimages."""
        stem_cache, block_caches, ln_cache, pool_cache = cache
        dx = mean_pool_backward(dfeatures, pool_cache)  # undoes 4.
        dx, grads["pre_head_layer_norm/scale"], grads["pre_head_layer_norm/bias"] = layer_norm_backward(
            dx, ln_cache)  # undoes 3.
        for i in reversed(range(self.num_blocks)):  # undoes 2., last block first
            dx, block_grads = mixer_block_backward(dx, block_caches.pop())
            grads.update(prefixed(block_grads, f"MixerBlock_{i}"))
        dimages, grads["stem/kernel"], grads["stem/bias"] = stem_backward(dx, stem_cache)  # undoes 1.
        return dimages

    def _image_size_hint(self) -> str:
        return f" (its token-mixing weights are sized for {self.num_tokens} patches)"


def permuted_params(params: dict[str, Array], token_order: Any, pixel_order: Any) -> dict[str, Array]:
    """A Mixer's parameters in permuted coordinates: with the input's tokens reordered by ``token_order`` and the
    pixels inside every patch by ``pixel_order`` (``data.permutations``), these weights give exactly the logits
    the original weights give on the original images. Token mixing is the only layer that sees the token order,
    the stem the only one that sees the pixel order inside a patch:

    * ``stem/kernel`` (P, P, C_in, C): its P*P pixel rows reordered by ``pixel_order``;
    * ``MixerBlock_i/token_mixing/Dense_0/kernel`` (S, D_S): rows (input tokens) by ``token_order``;
    * ``MixerBlock_i/token_mixing/Dense_1/kernel`` (D_S, S) columns and ``.../Dense_1/bias`` (S,) (output tokens)
      by ``token_order``;
    * everything else as it is. Returns a new dict of new arrays (NumPy or CuPy, as given)."""
    stem = params["stem/kernel"]
    p, _, c_in, c = stem.shape
    xp = array_module(stem)
    token_order, pixel_order = xp.asarray(token_order), xp.asarray(pixel_order)  # indices on the weights' device
    out = {name: value.copy() for name, value in params.items()}
    out["stem/kernel"] = stem.reshape(p * p, c_in, c)[pixel_order].reshape(stem.shape)  # (P*P, C_in, C) rows
    for name, value in params.items():
        if name.endswith("token_mixing/Dense_0/kernel"):
            out[name] = value[token_order]  # (S, D_S): rows are the input tokens
        elif name.endswith("token_mixing/Dense_1/kernel"):
            out[name] = value[:, token_order]  # (D_S, S): columns are the output tokens
        elif name.endswith("token_mixing/Dense_1/bias"):
            out[name] = value[token_order]  # (S,)
    return out
