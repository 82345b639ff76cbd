"""tinymixer: MLP-Mixer (Tolstikhin et al., 2021) from scratch in NumPy, on CuPy GPU arrays when there is a GPU.

Every forward and backward pass is written by hand and proven by finite-difference gradient checks.
"""

import os as _os

# OpenBLAS's worker threads keep spinning for about 2^28 cycles after every call before they sleep; between the
# Mixer's many matrix multiplies that spinning occupies the cores that the elementwise work (chunks.py) needs:
# measured 10-20% of a 2-thread training step. Ask them to sleep at once. This only takes effect if NumPy has not
# loaded OpenBLAS yet (import tinymixer first, or set the variable in the shell); a value already set is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .backend import (
    array_module,
    backend_name,
    get_backend,
    keep_freed_host_memory,
    set_backend,
    synchronize,
    to_device,
    to_host,
)
from .gradcheck import check_gradients, directional_check, numerical_gradient, rel_error
from .layers import softmax_cross_entropy
from .model import SIZES, MixerSize, MlpMixer, describe_size
from .optim import SGD, clip_by_global_norm, global_norm, warmup_cosine

# Keep freed host memory for the next step instead of page-faulting it in again (8-10% of a step; see the
# function). TINYMIXER_KEEP_MALLOC=1 leaves the allocator as it is.
if not _os.environ.get("TINYMIXER_KEEP_MALLOC"):
    keep_freed_host_memory()

__version__ = "0.1.0"

__all__ = [
    "MlpMixer", "MixerSize", "SIZES", "describe_size", "softmax_cross_entropy",
    "SGD", "clip_by_global_norm", "global_norm", "warmup_cosine",
    "check_gradients", "directional_check", "numerical_gradient", "rel_error",
    "array_module", "backend_name", "get_backend", "set_backend", "synchronize", "to_device", "to_host",
    "keep_freed_host_memory",
]
