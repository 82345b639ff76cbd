"""tinymixer: MLP-Mixer (Tolstikhin et al., 2021) from scratch in NumPy, on CuPy GPU arrays when there is a GPU.

Every forward and backward pass is written by hand and proven by finite-difference gradient checks.

``import tinymixer as tm`` changes nothing in the process and loads nothing yet: each name below is imported from
its module the first time it is used (``tm.MlpMixer`` loads ``tinymixer.nn.mixer``). So a program can call
``tm.tune_host()`` before NumPy loads (tinymixer/util/host.py says what it tunes and why).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._lazy import submodules

__version__ = "0.1.0"

# The facade's names and the module each lives in (imported on first use: PEP 562's module __getattr__).
_NAMES = {
    "tinymixer.backend": ["array_module", "backend_name", "get_backend", "set_backend", "synchronize", "to_device",
                          "to_host"],
    "tinymixer.util.host": ["tune_host", "host_tuning", "keep_freed_host_memory", "BLAS_THREADS_SLEEP_AT_ONCE"],
    "tinymixer.nn.architectures": ["MODEL_NAMES", "auto_patch_size", "make_model", "model_from_config"],
    "tinymixer.nn.cnn": ["CNN_SIZES", "ResNet"],
    "tinymixer.nn.gradcheck": ["check_gradients", "directional_check", "numerical_gradient", "rel_error"],
    "tinymixer.nn.layers": ["softmax_cross_entropy"],
    "tinymixer.nn.mixer": ["SIZES", "MixerSize", "MlpMixer", "describe_size"],
    "tinymixer.training.optim": ["SCHEDULES", "SGD", "Adam", "AdamW", "clip_by_global_norm", "decay_mask",
                                 "global_norm", "schedule", "warmup_cosine", "warmup_linear_decay", "warmup_steps"],
    "tinymixer.transfer.weights": ["pretrained"],
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
_modules = submodules(__name__)
_SUBPACKAGES = ("backend", "chunks", "data", "exercises", "flat", "nn", "tools", "trainer", "training", "transfer",
                "util")  # what dir() lists besides the names

__all__ = [
    "MlpMixer", "MixerSize", "SIZES", "describe_size", "softmax_cross_entropy",
    "ResNet", "CNN_SIZES", "make_model", "model_from_config", "MODEL_NAMES", "auto_patch_size",
    "SGD", "Adam", "AdamW", "decay_mask", "clip_by_global_norm", "global_norm",
    "warmup_cosine", "warmup_linear_decay", "schedule", "SCHEDULES", "warmup_steps",
    "pretrained",
    "check_gradients", "directional_check", "numerical_gradient", "rel_error",
    "array_module", "backend_name", "get_backend", "set_backend", "synchronize", "to_device", "to_host",
    "tune_host", "host_tuning", "keep_freed_host_memory", "KEEPS_FREED_MEMORY", "BLAS_THREADS_SLEEP_AT_ONCE",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # the next use is a plain attribute
        return value
    if name == "KEEPS_FREED_MEMORY":  # whether tm.tune_host() kept freed memory (it once did on import)
        return importlib.import_module("tinymixer.util.host").host_tuning()["keeps_freed_memory"]
    return _modules(name)  # a module of the package (tm.nn, tm.backend, ...), as every subpackage does


def __dir__() -> list[str]:  # the public names, not this module's own helpers
    return sorted(set(__all__) | set(_SUBPACKAGES) | {"__version__"})


if TYPE_CHECKING:  # what type checkers and editors see; at run time the names come from __getattr__ above
    from .backend import array_module, backend_name, get_backend, set_backend, synchronize, to_device, to_host
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
    from .util.host import BLAS_THREADS_SLEEP_AT_ONCE, host_tuning, keep_freed_host_memory, tune_host

    KEEPS_FREED_MEMORY: bool  # whether tm.tune_host() kept freed memory in this process
