"""tinymixer: MLP-Mixer (Tolstikhin et al., 2021) from scratch in NumPy, on CuPy GPU arrays when there is a GPU.

Every forward and backward pass is written by hand and proven by finite-difference gradient checks.
"""

import os as _os

from ._blas_threads import BLAS_THREADS_SLEEP_AT_ONCE  # first: before anything loads NumPy
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
from .nn.architectures import MODEL_NAMES, auto_patch_size, make_model, model_from_config
from .nn.cnn import CNN_SIZES, ResNet
from .nn.gradcheck import check_gradients, directional_check, numerical_gradient, rel_error
from .nn.layers import softmax_cross_entropy
from .nn.mixer import SIZES, MixerSize, MlpMixer, describe_size
from .training.optim import (
    SCHEDULES,
    SGD,
    Adam,
    AdamW,
    clip_by_global_norm,
    decay_mask,
    global_norm,
    schedule,
    warmup_cosine,
    warmup_linear_decay,
    warmup_steps,
)
from .transfer.weights import pretrained

# Keep freed host memory for the next step instead of page-faulting it in again (8-10% of a step; see the
# function). TINYMIXER_KEEP_FREED_MEMORY=0 leaves the allocator as it is (and the process's memory can shrink).
# Its old name, TINYMIXER_KEEP_MALLOC=1, read backwards (it meant "do not keep"); it is still honoured, with a note.
if _os.environ.get("TINYMIXER_KEEP_MALLOC"):
    import warnings as _warnings

    _warnings.warn("TINYMIXER_KEEP_MALLOC is renamed: use TINYMIXER_KEEP_FREED_MEMORY=0 to leave glibc's malloc as "
                   "it is", FutureWarning, stacklevel=2)
    _os.environ.setdefault("TINYMIXER_KEEP_FREED_MEMORY", "0")
KEEPS_FREED_MEMORY = _os.environ.get("TINYMIXER_KEEP_FREED_MEMORY", "1") != "0" and keep_freed_host_memory()

__version__ = "0.1.0"

__all__ = [
    "MlpMixer", "MixerSize", "SIZES", "describe_size", "softmax_cross_entropy",
    "ResNet", "CNN_SIZES", "make_model", "model_from_config", "MODEL_NAMES", "auto_patch_size",
    "SGD", "Adam", "AdamW", "decay_mask", "clip_by_global_norm", "global_norm",
    "warmup_cosine", "warmup_linear_decay", "schedule", "SCHEDULES", "warmup_steps",
    "pretrained",
    "check_gradients", "directional_check", "numerical_gradient", "rel_error",
    "array_module", "backend_name", "get_backend", "set_backend", "synchronize", "to_device", "to_host",
    "keep_freed_host_memory", "KEEPS_FREED_MEMORY", "BLAS_THREADS_SLEEP_AT_ONCE",
]
