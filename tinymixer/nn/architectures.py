"""The networks by name: every Mixer size (mixer.SIZES) and every CNN baseline size (cnn.CNN_SIZES), built the
same way, and rebuilt from the ``config()`` a checkpoint stores.

    make_model("tiny/4", num_classes=10, image_size=32)       # an MlpMixer
    make_model("cnn-tiny", num_classes=10, image_size=32)     # a ResNet
    model_from_config(model.config())                        # the same network again (other weights)
"""

from __future__ import annotations

from typing import Any

from .cnn import CNN_SIZES, ResNet
from .mixer import SIZES, MlpMixer
from .network import Network

MODEL_NAMES: list[str] = [*SIZES, *CNN_SIZES]

MIN_TOKENS = 16  # the automatic patch size keeps at least a 4 x 4 grid of tokens for token mixing to mix


def auto_patch_size(size_patch: int, image_hw: tuple[int, int], min_tokens: int = MIN_TOKENS) -> int:
    """The size's patch size if it tiles (H, W) images into at least ``min_tokens`` patches, else the largest
    smaller one that does (so that an 8x8 image is not cut into 4 tokens); 1 if none does."""
    h, w = image_hw
    fits = [p for p in range(size_patch, 0, -1) if h % p == 0 and w % p == 0 and (h // p) * (w // p) >= min_tokens]
    return fits[0] if fits else 1


def make_model(name: str, *, num_classes: int, image_size: int | tuple[int, int] = 32, **kwargs: Any) -> Network:
    """The named network; keywords of its class's constructor (``seed``, ``dtype``, ``in_channels``,
    ``patch_size`` for a Mixer ...) override the size's values."""
    if name in CNN_SIZES:
        return ResNet.from_name(name, num_classes=num_classes, image_size=image_size, **kwargs)
    if name in SIZES:
        return MlpMixer.from_name(name, num_classes=num_classes, image_size=image_size, **kwargs)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


def model_from_config(config: dict[str, Any], **overrides: Any) -> Network:
    """Rebuild a network from its ``config()`` (what checkpoints store). A config without ``architecture`` is a
    Mixer's (Mixer configs never had the key)."""
    config = dict(config) | overrides
    architecture = config.pop("architecture", "mixer")
    if architecture == "resnet":
        return ResNet(**config)
    if architecture == "mixer":
        return MlpMixer(**config)
    raise ValueError(f"unknown architecture {architecture!r} in a model configuration (known: mixer, resnet)")


def family(model: Network | str) -> str:
    """'Mixer' or 'CNN', for messages and reports: of a network, or of a size's name (the CNN's are cnn-*)."""
    if isinstance(model, str):
        return "CNN" if model in CNN_SIZES else "Mixer"
    return "CNN" if isinstance(model, ResNet) else "Mixer"
