"""Pretrained models: fine-tuning from a checkpoint, few-shot linear evaluation, conversion to and from other
layouts."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
