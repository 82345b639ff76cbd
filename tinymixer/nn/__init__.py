"""The networks, every forward and backward by hand: layers, blocks, the Mixer, the CNN baseline, gradient checks."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
