"""The CNN baseline: a compact pre-activation ResNet, written the same way as the Mixer.

The paper measures the Mixer against BiT ResNets: ResNet-v2 (pre-activation: normalise, ReLU, then convolve)
with Group Normalization, which, unlike BatchNorm, works the same at any batch size and in training and
evaluation alike. This is that design at CIFAR scale (He et al. 2016's CIFAR ResNets: a 3x3 stem, three stages
at full, half and quarter resolution, the channel count doubling at each):

    images (B, H, W, C_in)
    -> stem: 3x3 convolution to w_0 channels                                      (B, H, W, w_0)
    -> stage s = 0, 1, 2: d_s residual blocks of width w_s, the first with stride 2 (except in stage 0)
           block:  a = ReLU(GroupNorm(x))                    the pre-activation, shared by both paths
                   y = shortcut(a) + conv3x3(ReLU(GroupNorm(conv3x3_stride(a))))
                   shortcut = identity when shape is kept, else a 1x1 convolution with the stride (of a)
                                                                                (B, H/4, W/4, w_2) at the end
    -> GroupNorm -> ReLU -> mean over the H/4 x W/4 positions                      (B, w_2)
    -> head (Network): dense to the classes                                       (B, K)

Convolutions have no bias (a normalisation follows every one of them but the last of a block, whose output is
added to the shortcut and normalised in the next block). Kernels start He-normal (truncated, variance 2/fan-in,
right for ReLU), GroupNorm scales at 1 and biases at 0, the head at 0 as in the Mixer and BiT. Not in it: BiT's
weight standardisation (a convolution kernel normalised per output channel before use), which matters for its
large-batch transfer setting and would add one more layer to differentiate.

Convolution is ``conv.conv2d_forward``: im2col and a GEMM, the stem's patchify generalised to any stride and
padding (on the CPU in cache-sized blocks of images). This module adds what a CNN needs beyond the Mixer's
layers: GroupNorm, ReLU and the residual block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..util.numbers import is_whole
from .blocks import prefixed, subtree
from .conv import conv2d_backward, conv2d_forward
from .layers import (  # GroupNorm and ReLU live with the other layers; their names are kept here too
    Array,
    group_norm_backward,  # noqa: F401 - kept importable from here
    group_norm_forward,  # noqa: F401
    group_norm_relu_backward,
    group_norm_relu_forward,
    mean_pool_backward,
    mean_pool_forward,
    relu_backward,  # noqa: F401
    relu_forward,  # noqa: F401
)
from .network import Network, he_normal, image_hw

# ----------------------------------------------------------------------------------------------------------------
# The residual block (pre-activation)


def residual_block_forward(x: Array, p: dict[str, Array], stride: int, groups: int, train: bool = True
                           ) -> tuple[Array, tuple | None]:
    """One pre-activation residual block (ResNet-v2, as BiT):

        a   = ReLU(GroupNorm_1(x))                                  (B, H, W, C_in)
        h   = ReLU(GroupNorm_2(conv1(a)))     conv1: 3x3, stride s  (B, H', W', C)
        y   = shortcut + conv2(h)             conv2: 3x3, stride 1  (B, H', W', C)

    with ``shortcut = x`` when the block keeps the shape, else ``shortcut = proj(a)`` (a 1x1 convolution with
    stride s: ``p`` then holds ``shortcut/kernel``). H' = ceil(H / s).
    ``p``: norm1/{scale,bias} (C_in,), conv1/kernel (3, 3, C_in, C), norm2/{scale,bias} (C,),
    conv2/kernel (3, 3, C, C) [, shortcut/kernel (1, 1, C_in, C)]. Returns y and the cache.
    """
    a, norm1 = group_norm_relu_forward(x, p["norm1/scale"], p["norm1/bias"], groups, train=train)  # (B, H, W, C_in)
    if "shortcut/kernel" in p:  # the shape changes: project the pre-activation
        shortcut, proj = conv2d_forward(a, p["shortcut/kernel"], None, stride=stride)  # (B, H', W', C)
    else:
        shortcut, proj = x, None
    h, conv1 = conv2d_forward(a, p["conv1/kernel"], None, stride=stride, padding=1)  # (B, H', W', C)
    h, norm2 = group_norm_relu_forward(h, p["norm2/scale"], p["norm2/bias"], groups, train=train)
    h, conv2 = conv2d_forward(h, p["conv2/kernel"], None, stride=1, padding=1)  # (B, H', W', C)
    y = h + shortcut  # the residual sum
    return y, ((norm1, proj, conv1, norm2, conv2) if train else None)


def residual_block_backward(dy: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
    """Gradients of ``residual_block_forward``: the branch backwards, the shortcut's gradient added where the two
    paths split (at x for an identity shortcut, at the pre-activation a for a projection).
    Inputs: dy (B, H', W', C). Returns dx (B, H, W, C_in) and the parameter gradients (names as ``p``)."""
    norm1, proj, conv1, norm2, conv2 = cache
    grads: dict[str, Array] = {}
    dh, grads["conv2/kernel"], _ = conv2d_backward(dy, conv2)  # the branch, last layer first
    dh, grads["norm2/scale"], grads["norm2/bias"] = group_norm_relu_backward(dh, norm2)
    da, grads["conv1/kernel"], _ = conv2d_backward(dh, conv1)  # (B, H, W, C_in)
    if proj is not None:  # the shortcut read a: its gradient joins the branch's there
        da_shortcut, grads["shortcut/kernel"], _ = conv2d_backward(dy, proj)
        da += da_shortcut
    dx, grads["norm1/scale"], grads["norm1/bias"] = group_norm_relu_backward(da, norm1)
    if proj is None:  # identity shortcut: dy reaches x unchanged
        dx += dy
    return dx, grads


# ----------------------------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class CnnSize:
    """The shape hyper-parameters of one named CNN size."""

    widths: tuple[int, ...]  # channels of each stage (the stem has the first stage's)
    depths: tuple[int, ...]  # residual blocks per stage
    groups: int  # GroupNorm groups in every normalisation


# Sized to pair with the Mixers of the same parameter count on 32x32 images, 10 classes (docs/model.md):
# cnn-micro ~ micro/4 (0.18M vs 0.15M), cnn-tiny ~ tiny/4 (1.1M vs 1.1M), cnn-small ~ small/4 (4.3M vs 4.4M).
CNN_SIZES: dict[str, CnnSize] = {
    "cnn-micro": CnnSize((16, 32, 64), (2, 2, 2), 8),
    "cnn-tiny": CnnSize((40, 80, 160), (2, 2, 2), 8),
    "cnn-small": CnnSize((80, 160, 320), (2, 2, 2), 16),
}


class ResNet(Network):
    """A compact pre-activation ResNet with GroupNorm (module docstring), with hand-written forward and backward.

    Keywords: ``num_classes``, ``widths`` (channels per stage), ``depths`` (blocks per stage), ``groups``
    (GroupNorm groups; must divide every width), ``image_size`` (int or (H, W)), ``in_channels``, ``seed``,
    ``dtype`` ("float32" or "float64"). Same interface as ``MlpMixer`` (``network.Network``): images
    (B, H, W, in_channels) scaled to [-1, 1] in, logits (B, num_classes) out; ``forward``/``backward`` fill
    ``grads``; ``config()`` rebuilds it (``architectures.model_from_config``).
    """

    architecture = "resnet"

    def __init__(self, *, num_classes: int, widths: tuple[int, ...] | list[int], depths: tuple[int, ...] | list[int],
                 groups: int = 8, image_size: int | tuple[int, int] = 32, in_channels: int = 3, seed: int = 0,
                 dtype: str | Any = "float32") -> None:
        h, w = image_hw(image_size)
        widths, depths = tuple(widths), tuple(depths)
        for name, value in [("num_classes", num_classes), ("groups", groups), ("image height", h),
                            ("image width", w), ("in_channels", in_channels), *[("a width", v) for v in widths],
                            *[("a depth", v) for v in depths]]:
            if not is_whole(value, 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not widths or len(widths) != len(depths):
            raise ValueError(f"widths {widths} and depths {depths} must give one width and one depth per stage")
        if any(v % groups for v in widths):
            raise ValueError(f"groups {groups} must divide every width {widths} (GroupNorm splits the channels)")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.num_classes, self.widths, self.depths, self.groups = num_classes, widths, depths, groups
        self.image_size, self.in_channels = (h, w), in_channels
        self._initialise(seed)

    @classmethod
    def from_name(cls, name: str, *, num_classes: int, image_size: int | tuple[int, int] = 32,
                  **kwargs: Any) -> ResNet:
        """A named size, e.g. ``ResNet.from_name("cnn-tiny", num_classes=10)``; keywords override its values."""
        if name not in CNN_SIZES:
            raise ValueError(f"unknown CNN size {name!r}; known sizes: {', '.join(CNN_SIZES)}")
        return cls(num_classes=num_classes, image_size=image_size, **(vars(CNN_SIZES[name]) | kwargs))

    def config(self) -> dict[str, Any]:
        """The constructor keywords, plus ``architecture`` (checkpoints rebuild the right class from it)."""
        return {"architecture": self.architecture, "num_classes": self.num_classes, "widths": list(self.widths),
                "depths": list(self.depths), "groups": self.groups, "image_size": list(self.image_size),
                "in_channels": self.in_channels, "dtype": self.dtype.name}

    def describe(self) -> str:
        return (f"CNN (ResNet) of widths {'/'.join(map(str, self.widths))}, blocks "
                f"{'/'.join(map(str, self.depths))}")

    # ------------------------------------------------------------------------------------------------------------
    # Parameters

    def blocks(self) -> list[tuple[str, int, int, int]]:
        """(name, input channels, output channels, stride) of every residual block, in forward order."""
        out, c_in = [], self.widths[0]
        for s, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True)):
            for j in range(depth):
                stride = 2 if (s > 0 and j == 0) else 1
                out.append((f"stage{s}/block{j}", c_in, width, stride))
                c_in = width
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in forward order (the head last)."""
        shapes: dict[str, tuple[int, ...]] = {"stem/kernel": (3, 3, self.in_channels, self.widths[0])}
        for name, c_in, c, stride in self.blocks():
            block = {"norm1/scale": (c_in,), "norm1/bias": (c_in,), "conv1/kernel": (3, 3, c_in, c),
                     "norm2/scale": (c,), "norm2/bias": (c,), "conv2/kernel": (3, 3, c, c)}
            if stride != 1 or c_in != c:
                block["shortcut/kernel"] = (1, 1, c_in, c)
            shapes.update(prefixed(block, name))
        c = self.widths[-1]
        shapes.update({"pre_head_norm/scale": (c,), "pre_head_norm/bias": (c,),
                       "head/kernel": (c, self.num_classes), "head/bias": (self.num_classes,)})
        return shapes

    def init_kernel(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """He-normal for every convolution kernel (K, K, C_in, C_out), fan-in = all axes but the last.
        (Biases 0, GroupNorm scales 1 and a zero head: ``Network.init_params``.)"""
        return he_normal(rng, shape, fan_in=math.prod(shape[:-1]))

    def flops_per_image(self) -> int:
        """2 x the multiply-adds of one image's convolutions and head (norms, ReLUs and sums are a few percent)."""
        h, w = self.image_size
        total = h * w * 9 * self.in_channels * self.widths[0]  # the stem
        for _, c_in, c, stride in self.blocks():
            h, w = -(-h // stride), -(-w // stride)  # ceil: 3x3 padding 1 and 1x1 padding 0 agree on it
            total += h * w * 9 * (c_in * c + c * c)  # conv1, conv2
            if stride != 1 or c_in != c:
                total += h * w * c_in * c  # the 1x1 projection
        return 2 * (total + self.widths[-1] * self.num_classes)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and backward of the body (the head is Network's)

    def _features_shard(self, x: Array, train: bool, masks: Any = None) -> tuple[Array, tuple | None]:
        """Stem -> blocks -> GroupNorm -> ReLU -> mean over positions: the features (B, w_last) of one shard."""
        p = self.params
        x, stem = conv2d_forward(x, p["stem/kernel"], None, stride=1, padding=1)  # 1. (B, H, W, w_0)
        block_caches = []
        for name, _, _, stride in self.blocks():  # 2. (B, H/4, W/4, w_last) after the stages
            x, cache = residual_block_forward(x, subtree(p, name), stride, self.groups, train)
            block_caches.append(cache)
        x, norm = group_norm_relu_forward(x, p["pre_head_norm/scale"], p["pre_head_norm/bias"], self.groups,
                                          train=train)  # 3.
        b, h, w, c = x.shape
        x, pool = mean_pool_forward(x.reshape(b, h * w, c))  # 4. (B, C): global average pooling
        return x, ((stem, block_caches, norm, pool, (b, h, w, c)) if train else None)

    def _features_backward(self, dfeatures: Array, cache: tuple, grads: dict[str, Array]) -> Array:
        """Backward through 4.-1.: fills ``grads`` with the body's gradients, returns dL/dimages (B, H, W, C_in)."""
        stem, block_caches, norm, pool, shape = cache
        dx = mean_pool_backward(dfeatures, pool).reshape(shape)  # undoes 4.
        dx, grads["pre_head_norm/scale"], grads["pre_head_norm/bias"] = group_norm_relu_backward(dx, norm)  # undoes 3.
        for name, *_ in reversed(self.blocks()):  # undoes 2., last block first
            dx, block_grads = residual_block_backward(dx, block_caches.pop())
            grads.update(prefixed(block_grads, name))
        dimages, grads["stem/kernel"], _ = conv2d_backward(dx, stem)  # undoes 1.
        return dimages
