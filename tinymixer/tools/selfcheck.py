"""``python -m tinymixer``: what tinymixer runs on, and a self-check of a few seconds.

It prints the versions (tinymixer, Python, NumPy), the array backend in use and whether CuPy can use a GPU (and if
not, why), the BLAS library NumPy loaded with its thread count, how many threads (batch shards) a training step
uses, and the environment variables that change any of this. Then the checks, each with its number and PASS or
FAIL:

- gradients: a small float64 Mixer's hand-written backward (with the tanh GELU, then the erf one) against
  four-point finite differences of its loss, along random directions over all parameters and the input images at
  once (``gradcheck.directional_check``); a correct backward agrees to ~1e-10, a wrong one is off by far more than
  the limit of 1e-7;
- training: one float32 training step (``train.train_step``) of a ``micro/4`` Mixer, whose loss and updated
  parameters must be finite float32 numbers.

Exit code 0 when every check passes, 1 otherwise (or when the backend cannot be chosen).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import tinymixer as tm

from .. import backend, chunks, data
from ..nn.gradcheck import directional_check
from ..nn.layers import softmax_cross_entropy
from ..nn.mixer import MlpMixer
from ..training import distributed
from ..training.optim import SGD
from ..training.train import train_step
from ..util.cli import Parser
from .bench import blas_description

# The environment variables that change what tinymixer does, with what each one does.
ENVIRONMENT = {
    backend.ENV_VAR: "array backend: numpy, cupy or auto (unset: auto, CuPy when it runs on a GPU)",
    chunks.THREADS_ENV: "threads (batch shards) per step (unset: the BLAS thread settings, else the usable cores)",
    "OMP_NUM_THREADS": "BLAS/OpenMP threads; also tinymixer's thread count when TINYMIXER_THREADS is unset",
    "OPENBLAS_NUM_THREADS": "OpenBLAS threads; likewise",
    "MKL_NUM_THREADS": "MKL threads; likewise",
    data.DATA_DIR_ENV: "folder of the CIFAR-10 data (unset: $XDG_CACHE_HOME/tinymixer or ~/.cache/tinymixer)",
    "TINYMIXER_KEEP_FREED_MEMORY": "0: leave glibc's malloc as it is (unset or 1: keep freed memory for the next step)",
    **{name: f"BLAS threads' spin before sleeping (tm.tune_host(), which the programs call, sets {value} if unset)"
       for name, value in tm.BLAS_THREADS_SLEEP_AT_ONCE.items()},
}

GRADIENT_LIMIT = 1e-7  # float64: a correct backward lands at 1e-9..1e-12, a wrong one at 1e-5..1
BATCH = 16  # images in each check: two shards of MIN_SHARD on a machine with two or more threads


@dataclass
class CheckResult:
    """One check's outcome: what was checked, its number (as text), whether it passed, how long it took."""

    name: str
    value: str
    passed: bool
    seconds: float = 0.0

    def line(self) -> str:
        """The result as printed: name, number, seconds, PASS or FAIL."""
        return f"{self.name}: {self.value} ({self.seconds:.2f} s)  {'PASS' if self.passed else 'FAIL'}"


# ----------------------------------------------------------------------------------------------------------------
# What tinymixer runs on


def gpu_status() -> str:
    """Whether CuPy can run on a GPU: the device and CUDA version, or why not."""
    cupy, why_not = backend._load_cupy()
    if cupy is None:
        return f"not usable: {why_not}"
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        cuda = cupy.cuda.runtime.runtimeGetVersion()
        return f"usable: CuPy {cupy.__version__}, {name}, CUDA runtime {cuda // 1000}.{cuda % 1000 // 10}"
    except Exception as exc:  # the kernel ran, so only the description failed
        return f"usable: CuPy {cupy.__version__} ({type(exc).__name__} while describing the device: {exc})"


def describe() -> tuple[list[tuple[str, str]], str | None]:
    """(label, value) pairs describing the installation, and the error that stops the backend from being chosen
    (None when it can be)."""
    try:
        backend_error, name = None, tm.backend_name()
    except (ValueError, RuntimeError) as exc:  # a bad TINYMIXER_BACKEND, or cupy asked for where it cannot run
        backend_error, name = str(exc), "none"
    setting = os.environ.get(backend.ENV_VAR)
    chosen_by = f"{backend.ENV_VAR}={setting}" if setting else f"{backend.ENV_VAR} not set: auto"
    xp = backend.get_backend() if backend_error is None else np
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        shards = len(chunks.batch_shards(128, xp))
        threads = (f"{chunks.num_threads()} per step ({cores} usable cores): a batch of 128 images runs as "
                   f"{shards} shard{'s' * (shards != 1)}, one thread each")
    except ValueError as exc:  # a wrong TINYMIXER_THREADS (the checks below then fail with the same message)
        threads = f"cannot be chosen: {exc}"
    info = [
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {platform.system()} "
                   f"{platform.machine()})"),
        ("NumPy", np.__version__),
        ("backend", f"{name} ({chosen_by})" + (": cannot be chosen, see below" if backend_error else "")),
        ("GPU (CuPy)", gpu_status()),
        ("BLAS", blas_description()),
        ("threads", threads),
        ("data folder", str(data.default_data_dir())),
        ("processes", distributed.status()),
    ]
    return info, backend_error


# ----------------------------------------------------------------------------------------------------------------
# The self-check


def small_float64_mixer(seed: int = 0, gelu: str = "tanh") -> MlpMixer:
    """A float64 Mixer small enough to check in a fraction of a second (2 blocks, C 6, 8x8 images, patch 4), with
    every parameter drawn at random so that no gradient is zero by construction."""
    model = MlpMixer(num_classes=3, num_blocks=2, patch_size=4, hidden_dim=6, tokens_mlp_dim=5, channels_mlp_dim=7,
                     image_size=8, dtype="float64", seed=seed, gelu=gelu)
    rng = np.random.default_rng(seed + 100)
    for value in model.params.values():
        value[...] = model.xp.asarray(0.5 * rng.standard_normal(value.shape))
    return model


def gradient_check(model: MlpMixer | None = None, directions: int = 3, limit: float = GRADIENT_LIMIT) -> CheckResult:
    """Finite differences of a float64 Mixer's loss against its backward, along ``directions`` random directions
    over all parameters and the input images together. ``model`` defaults to ``small_float64_mixer()``."""
    model = model if model is not None else small_float64_mixer()
    name = (f"gradient check, float64 Mixer ({model.num_blocks} blocks, {model.gelu} GELU, {model.num_params()} "
            f"parameters, batch {BATCH})")
    rng = np.random.default_rng(1)
    images = model.xp.asarray(rng.uniform(-1, 1, (BATCH, *model.image_size, model.in_channels)))
    labels = rng.integers(0, model.num_classes, BATCH)

    def check() -> tuple[str, bool]:
        _, dlogits = softmax_cross_entropy(model.forward(images), labels)
        dimages = model.backward(dlogits)
        params, grads = {**model.params, "images": images}, {**model.grads, "images": dimages}

        def loss() -> Any:
            return softmax_cross_entropy(model.forward(images), labels)[0]

        worst = max(directional_check(loss, params, grads, seed=seed)[2] for seed in range(directions))
        return (f"worst relative error {worst:.1e} over {directions} random directions (limit {limit:.0e})"
                .replace("e-0", "e-"), worst < limit)

    return _timed_check(name, check)


def training_step_check(model: MlpMixer | None = None) -> CheckResult:
    """One float32 training step (forward, loss, backward, clipping, SGD-momentum update): the loss and every updated
    parameter must be finite float32 numbers. ``model`` defaults to a float32 micro/4 Mixer for 16x16 images."""
    model = model if model is not None else MlpMixer.from_name("micro/4", num_classes=10, image_size=16)
    name = f"training step, float32 Mixer ({model.num_params()} parameters, batch {BATCH})"
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (BATCH, *model.image_size, model.in_channels)).astype(np.float32)
    labels = rng.integers(0, model.num_classes, BATCH)

    def check() -> tuple[str, bool]:
        loss, _ = train_step(model, SGD(momentum=0.9), images, labels, lr=0.1, clip=1.0)
        value = float(loss)
        params_ok = all(p.dtype == np.float32 and bool(model.xp.isfinite(p).all()) for p in model.params.values())
        text = f"loss {value:.4f}" + ("" if params_ok else "; non-finite or non-float32 parameters after the update")
        return text, math.isfinite(value) and params_ok

    return _timed_check(name, check)


def _timed_check(name: str, check: Callable[[], tuple[str, bool]]) -> CheckResult:
    """Run ``check`` (returning its text and verdict); an exception is a failure whose text says what it was."""
    start = time.perf_counter()
    try:
        value, passed = check()
    except Exception as exc:
        value, passed = f"error: {type(exc).__name__}: {exc}", False
    backend.synchronize()
    return CheckResult(name, value, passed, time.perf_counter() - start)


def run_checks() -> list[CheckResult]:
    """The self-check on the backend in use: ``gradient_check`` of both GELU forms, then ``training_step_check``."""
    return [gradient_check(small_float64_mixer(gelu="tanh")), gradient_check(small_float64_mixer(gelu="erf")),
            training_step_check()]


# ----------------------------------------------------------------------------------------------------------------
# The command


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymixer [--no-check]``: print the description and run the self-check; returns the exit code."""
    parser = Parser(
        prog="python -m tinymixer", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Print tinymixer's version, Python and NumPy versions, the array backend and whether CuPy can "
                    "use a GPU (if not, why), the BLAS library and its threads, the threads (batch shards) a step "
                    "uses and the environment variables that matter; then check, in about a second, a float64 "
                    "Mixer's gradients against finite differences and one float32 training step. Exit code 0 when "
                    "every check passes, 1 otherwise.")
    parser.add_argument("--no-check", action="store_true", help="only describe the installation, check nothing")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info, backend_error = describe()
    print(f"tinymixer {tm.__version__}")
    width = max(len(label) for label, _ in info)
    for label, value in info:
        print(f"  {label:<{width}}  {value}")
    print("environment")
    width = max(len(name) for name in ENVIRONMENT)
    for name, meaning in ENVIRONMENT.items():
        value = os.environ.get(name)
        print(f"  {name:<{width}}  {'(not set)' if value is None else repr(value):<10}  {meaning}")
    if backend_error:
        print(f"no backend: {backend_error}")
        return 1
    if args.no_check:
        return 0
    print(f"self-check on {tm.backend_name()}")
    results = run_checks()
    for result in results:
        print(f"  {result.line()}")
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed ({time.perf_counter() - start:.1f} s)"
          + (": " + "; ".join(f"FAIL {r.name}" for r in failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
