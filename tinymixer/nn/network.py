"""What every network here shares: a flat dict of parameters, a training forward that keeps caches, a backward
that fills ``grads`` (views of one contiguous ``grad_buffer``), a batch cut into shards run on threads, the linear
head on pooled features, and input checks. ``MlpMixer`` (mixer.py) and the CNN baseline ``ResNet`` (cnn.py) are
subclasses: each writes only its own body, from images to the pooled features (B, C), and that body's backward.

    logits = features(images) @ W_head + b_head        features: the subclass's body, (B, C)

So ``train.train_step``, the optimisers, checkpoints, evaluation and the data-parallel all-reduce treat every
network the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from ..chunks import batch_shards, for_shards
from ..flat import FlatArrays
from ..util.numbers import is_whole
from .blocks import masks_rows
from .layers import Array, dense_backward, dense_forward

HEAD = ("head/kernel", "head/bias")  # every network's head: the last parameters, in this order


def image_hw(image_size: Any) -> tuple[int, int]:
    """(H, W) from a constructor's ``image_size``: one whole number for square images, or (H, W) (NumPy's integers
    too). Anything else is refused, saying what was given; the constructor checks that both are at least 1."""
    if is_whole(image_size):
        return int(image_size), int(image_size)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(is_whole(v) for v in image_size):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"image_size must be a whole number or (height, width), got {image_size!r}"
                     + (": images.shape[1:3] gives (H, W) of a batch" if isinstance(image_size, tuple) else ""))


def count_params(shapes: dict[str, tuple[int, ...]], include_head: bool = True) -> int:
    """The number of parameters of these shapes (without the head's, if asked)."""
    return sum(math.prod(v) for k, v in shapes.items() if include_head or k not in HEAD)


# Initialisers (the networks draw their kernels with these, from NumPy generators: the same on CPU and GPU)


def lecun_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Flax's default kernel initialiser: a normal with variance 1/fan_in, truncated at two standard deviations
    (the truncation's variance loss is corrected, as in ``jax.nn.initializers.variance_scaling``)."""
    # std of a standard normal truncated to [-2, 2] is 0.87962566103423978; divide it out so the variance is 1/fan_in
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():  # redraw the tails: rejection sampling gives the truncated normal exactly
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """A truncated normal with variance 2/fan_in (He et al. 2015: keeps activations' scale through ReLUs)."""
    return lecun_normal(rng, shape, fan_in) * math.sqrt(2.0)


class Network:
    """The shared machinery. A subclass sets ``dtype``, ``image_size``, ``in_channels``, ``num_classes``, calls
    ``_initialise(seed)`` (which makes ``params`` from its ``init_params``, ending with ``head/kernel`` and
    ``head/bias``), and implements ``param_shapes``, ``config``, ``describe``, ``flops_per_image``, ``init_kernel``,
    ``_features_shard`` and ``_features_backward``."""

    xp: Any
    dtype: np.dtype
    params: dict[str, Array]
    image_size: tuple[int, int]
    in_channels: int
    num_classes: int

    def _initialise(self, seed: int) -> None:
        """The parameters from ``init_params(seed)`` (NumPy, so a seed means the same weights on every backend),
        moved to the backend's arrays in the network's dtype; no gradients or cache yet."""
        self.xp = backend.get_backend()
        # one contiguous buffer, the parameters its views (flat.py): an optimiser then updates all of them at once
        self.params: FlatArrays = FlatArrays.of(self.init_params(seed), self.xp, self.dtype)
        self._reset_state()

    def _reset_state(self) -> None:
        self.grads: dict[str, Array] = {}  # FlatArrays once the first backward made them (``gradients``)
        self._cache: tuple | None = None

    # ------------------------------------------------------------------------------------------------------------
    # What a subclass provides

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def flops_per_image(self) -> int:
        raise NotImplementedError

    def init_kernel(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """A fresh kernel of ``shape`` (..., C_out), drawn from ``rng``: the family's initialiser."""
        raise NotImplementedError

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Fresh parameters on the host in float64, from one seeded NumPy generator (so a seed means the same
        weights on every backend), in ``param_shapes`` order: zero biases and a zero head kernel (the first
        logits are all 0: every class starts equally likely), norm scales one, every other kernel from
        ``init_kernel``."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in self.param_shapes().items():
            if name == "head/kernel" or name.endswith("/bias"):
                params[name] = np.zeros(shape)
            elif name.endswith("/scale"):
                params[name] = np.ones(shape)
            else:
                params[name] = self.init_kernel(rng, shape)
        return params

    def _features_shard(self, x: Array, train: bool, masks: Any = None) -> tuple[Array, tuple | None]:
        """The body on one batch (or shard): features (B, C) and, when ``train``, the caches its backward needs."""
        raise NotImplementedError

    def _features_backward(self, dfeatures: Array, cache: tuple, grads: dict[str, Array]) -> Array:
        """The body's backward: fills ``grads`` with its parameters' gradients, returns dL/dimages."""
        raise NotImplementedError

    def _image_size_hint(self) -> str:
        """Why the image size is fixed, for the error message of a wrongly sized batch."""
        return ""

    # ------------------------------------------------------------------------------------------------------------
    # Regularisers: none unless the subclass has them

    @property
    def regularized(self) -> bool:
        """Whether training passes use random masks (dropout, stochastic depth)."""
        return False

    def draw_masks(self, rng: Any, batch_size: int) -> Any:
        """The random masks of one training pass, or None when the network has no regulariser (nothing drawn)."""
        return None

    def _training_masks(self, batch: int, train: bool, rng: Any, masks: Any) -> Any:
        return None

    def describe(self) -> str:
        """The network in a few words, for the programs' first line (e.g. "MLP-Mixer of 8 blocks, patch 4")."""
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """The width C of ``features`` (B, C): what the head maps to the logits, and few-shot probes are fitted on."""
        return self.param_shapes()["head/kernel"][0]

    def num_params(self, include_head: bool = True) -> int:
        return count_params(self.param_shapes(), include_head)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and backward

    def forward(self, images: Array, train: bool = True, rng: Any = None, masks: Any = None) -> Array:
        """Logits (B, num_classes) for images (B, H, W, in_channels).

        With ``train=True`` the caches that ``backward`` needs are kept (until the next forward); with
        ``train=False`` nothing is kept, which halves the memory of an evaluation pass. On a multi-core CPU the
        batch is cut into one shard per core and each shard goes through the network on its own thread
        (``chunks.for_shards``: every layer treats each image independently, so the logits are the same).

        A network with regularisers applies them in training passes, with the masks ``draw_masks(rng, B)`` draws
        from ``rng`` (a NumPy Generator or a seed, e.g. ``[seed, epoch, step]``: one per step makes a resumed run
        bit-exact), or with ``masks`` given (a gradient check holds them fixed). Evaluation passes, and networks
        without regularisers, ignore both.
        """
        x = self._checked_images(images)
        masks = self._training_masks(x.shape[0], train, rng, masks)  # drawn for the whole batch, then cut
        shards = batch_shards(x.shape[0], self.xp)
        results = for_shards(lambda rows: self._forward_shard(x[rows], train, masks_rows(masks, rows)), shards)
        logits = results[0][0] if len(shards) == 1 else self.xp.concatenate([r[0] for r in results])
        self._cache = (shards, [r[1] for r in results]) if train else None
        return logits

    def _forward_shard(self, x: Array, train: bool, masks: Any = None) -> tuple[Array, tuple | None]:
        """The network on one batch (or shard): returns the logits and the caches for ``_backward_shard``."""
        x, body_cache = self._features_shard(x, train, masks)  # (B, C)
        logits, head_cache = dense_forward(x, self.params["head/kernel"], self.params["head/bias"])  # (B, K)
        return logits, ((body_cache, head_cache) if train else None)

    def features(self, images: Array) -> Array:
        """The pre-logits representation (B, C) of images (B, H, W, in_channels), what the head maps to the logits

            logits = features @ W_head + b_head

        (few-shot linear evaluation fits its classifiers on these). An evaluation pass, as
        ``forward(images, train=False)``: no caches are kept (those of an earlier training forward are dropped
        too), the batch is cut into shards as in ``forward``, and the result stays on the network's backend."""
        x = self._checked_images(images)
        self._cache = None
        shards = batch_shards(x.shape[0], self.xp)
        results = for_shards(lambda rows: self._features_shard(x[rows], train=False)[0], shards)
        return results[0] if len(shards) == 1 else self.xp.concatenate(results)

    def backward(self, dlogits: Array) -> Array:
        """Back-propagate dL/dlogits (B, K) through the last training forward; fills ``self.grads`` (the same
        names and shapes as ``self.params``) and returns dL/dimages (B, H, W, in_channels). ``dlogits`` on the
        host is moved to the network's device (as ``forward`` moves images); in another dtype it is cast.

        With several shards, each shard's backward runs on its own thread and the parameter gradients are the sum
        of the shards' (the loss's gradient is a sum over images), added in shard order: deterministic for a given
        number of threads, and equal to the unsharded gradient up to float rounding."""
        if self._cache is None:
            raise RuntimeError("backward() needs a preceding forward(images, train=True); the last forward was an "
                               "evaluation pass (train=False) or there was none")
        shards, caches = self._cache
        dlogits = self.xp.asarray(dlogits, dtype=self.dtype)  # as forward takes images: host values are moved
        expected = (shards[-1].stop, self.num_classes)
        if dlogits.shape != expected:  # checked before the caches go: a corrected call can still run
            raise ValueError(f"dlogits must be (images, classes) = {expected}: the last forward saw {expected[0]} "
                             f"images, of {expected[1]} classes; got {tuple(dlogits.shape)}")
        self._cache = None  # free the activations as soon as backward is done with them
        results = for_shards(lambda i: self._backward_shard(dlogits[shards[i]], caches[i]), list(range(len(shards))))
        # The gradients go into one contiguous buffer (``grad_buffer``; ``grads`` holds views of it), so that a
        # data-parallel run all-reduces them in one call with nothing packed or unpacked. With several shards the
        # buffer receives their sum, which is formed anyway; with one shard it costs one copy of the gradients.
        buffer = self.gradients().buffer
        if len(results) == 1:  # one copy into the buffer, in one call (on a GPU: one kernel, not one per parameter)
            self.xp.concatenate([results[0][1][name] for name in self.grads], axis=None, out=buffer)  # flattened
            return results[0][0]
        for name, view in self.grads.items():
            self.xp.add(results[0][1][name], results[1][1][name], out=view)  # shard 0 + shard 1 + ...: a fixed order
            for _, shard_grads in results[2:]:
                view += shard_grads[name]
        return self.xp.concatenate([r[0] for r in results])

    def _backward_shard(self, dlogits: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """Backward through one shard's caches: returns dL/dimages of the shard and its parameter gradients."""
        body_cache, head_cache = cache
        grads: dict[str, Array] = {}
        dx, grads["head/kernel"], grads["head/bias"] = dense_backward(dlogits, head_cache)  # undoes the head
        dimages = self._features_backward(dx, body_cache, grads)  # undoes the body
        return dimages, grads

    def gradients(self) -> FlatArrays:
        """The memory of the gradients, which the network owns: one contiguous buffer in the parameters' layout,
        whose views ``grads`` are (flat.py). Made by the first call (the first backward: a network that is only
        evaluated never pays for it), then the same memory every step: each backward overwrites it."""
        if not isinstance(self.grads, FlatArrays):
            self.grads = self.params.zeros_like()
        return self.grads

    @property
    def grad_buffer(self) -> Array:
        """All parameter gradients in one contiguous 1-D array, in ``params`` order (``grads`` holds views of it):
        what a data-parallel run all-reduces in one call. There after the first backward."""
        if not isinstance(self.grads, FlatArrays):
            raise RuntimeError("no gradients yet: grad_buffer is there after the first backward()")
        return self.grads.buffer

    def __call__(self, images: Array, train: bool = False, rng: Any = None) -> Array:
        return self.forward(images, train=train, rng=rng)

    # ------------------------------------------------------------------------------------------------------------
    # Input checks: a clear error instead of a silent wrong answer

    def _checked_images(self, images: Array) -> Array:
        """Validate a batch of images and move it to the network's device and dtype.

        The checks run where the images are: on the host for NumPy input (the usual case, no GPU sync); on the
        device for CuPy input (the NaN check then costs one sync).
        """
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(f"images must be a NumPy or CuPy array, got {type(images).__name__}")
        h, w = self.image_size
        expected = f"(batch, {h}, {w}, {self.in_channels})"
        if len(shape) != 4:
            hint = " (a single image? add a batch axis: images[None])" if len(shape) == 3 else ""
            raise ValueError(f"images must be a 4-D batch {expected}, got shape {tuple(shape)}{hint}")
        if shape[3] != self.in_channels:
            hint = " (channels-first? transpose to (B, H, W, C))" if shape[1] == self.in_channels else ""
            raise ValueError(f"images have {shape[3]} channels, the model expects {self.in_channels}: shape "
                             f"{tuple(shape)}, expected {expected}{hint}")
        if tuple(shape[1:3]) != (h, w):
            raise ValueError(
                f"images are {shape[1]}x{shape[2]} but this model was built for {h}x{w}{self._image_size_hint()}. "
                f"Resize the images, or build the model with image_size=({shape[1]}, {shape[2]})."
            )
        if dtype.kind != "f":
            raise TypeError(
                f"images must be floating point, got {dtype}. Convert and scale them first, e.g. "
                f"(images.astype(np.float32) - 127.5) / 127.5 for 8-bit pixels."
            )
        xp = backend.array_module(images)
        if not bool(xp.isfinite(images).all()):
            raise ValueError("images contain NaN or inf values; clean the input (e.g. check the data loading)")
        return self.xp.asarray(images, dtype=self.dtype)

