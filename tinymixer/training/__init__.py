"""Training: optimisers and schedules, the step and the loop, augmentation, averaging, checkpoints, evaluation,
data parallelism."""

from .._lazy import submodules

__getattr__ = submodules(__name__)  # this package's modules as attributes on first use
