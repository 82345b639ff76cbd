"""Benchmark: tinymixer's training step and inference, against PyTorch's eager CPU step when PyTorch is installed.

    python -m tinymixer.tools.bench                                   # tiny/4 and small/4, batch 128, 1 and 2 threads
    python -m tinymixer.tools.bench --configs micro/4 --threads 2 --json bench.json
    python -m tinymixer.tools.bench --configs cnn-micro cnn-tiny                    # the CNN baseline (cnn.py)

For each thread count a fresh worker process runs with the BLAS and OpenMP thread counts set (so that the
libraries see them when they load); it measures, per model size:
- one training step (forward, loss, backward, clipping, SGD-momentum update) and one inference pass, medians of
  ``--repeats``, tinymixer and PyTorch interleaved in the same process so both see the same machine state;
- images/s, the GFLOP/s achieved on the model's matrix-multiply FLOPs, and that rate as a fraction of the machine's
  own float32 GEMM rate (measured here on a 2048^3 matrix multiply);
- peak memory: each framework in a process of its own builds the model and runs three training steps; the peak
  resident memory above the process's memory before the model existed (Linux: the VmHWM counter);
- PyTorch: the identical network with the same weights (a Mixer: nn.Conv2d stem, LayerNorm, Linear, tanh GELU;
  a CNN size such as cnn-tiny: nn.Conv2d, GroupNorm, ReLU, the same pre-activation residual blocks), whose logits
  are checked against tinymixer's before anything is timed.
tinymixer runs as users get it: with several threads the batch is cut into one shard per thread
(``chunks.for_shards``); the header line of each thread count says into how many.

Every timing is judged before it is shown (``assess_stability``): when the repeats of a timing spread over more
than 20% of their median, when the same work took 1.5x longer on more threads than on fewer, or when the GEMM
probe on N threads ran below 0.75 of N times its rate on fewer (the cores were not free), the timing gets a "!"
and a footnote that says which check failed and by how much, and a ratio resting on it reads "unstable" instead of
a number. The spreads and verdicts are in the JSON (``stability`` of each result, ``gemm_*`` of each machine).

Timing is a benchmark, never a test assertion. Note: some machines set OPENBLAS_CORETYPE to force an old GEMM
kernel; run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` to measure what users get. The kernel that
actually ran is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..util.cli import HelpWithExamples, Parser, add_backend_option, positive_int
from ..util.host import tune_host, tuned_environment

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------------------------------------------
# Measuring, inside a worker process


def _peak_memory_reset() -> int | None:
    """Reset Linux's peak-RSS counter and return the current RSS in bytes (None where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status("VmRSS")
    except OSError:
        return None


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _median_ms(samples: list[float]) -> float:
    samples = sorted(samples)
    return 1000 * samples[len(samples) // 2]


def _gemm_gflops(xp: Any, n: int = 2048, repeats: int = 5) -> list[float]:
    """The machine's float32 GEMM rate (the GPU's, on CuPy): GFLOP/s of each of ``repeats`` n x n x n matrix
    multiplies (after one warm-up). The best is the rate reported; their spread and how the rate grows with
    threads say whether the cores were free while the benchmark ran (``assess_stability``)."""
    import numpy as np

    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    b, out = a.copy(), xp.empty_like(a)
    xp.matmul(a, b, out=out)
    return [2 * n**3 / _timed(lambda: xp.matmul(a, b, out=out)) / 1e9 for _ in range(repeats)]


_torch_synchronize: Any = None  # torch.cuda.synchronize while PyTorch runs on the GPU


def _timed(fn: Any) -> float:
    """Seconds of ``fn()``, read after the GPU (CuPy's and PyTorch's, when in use) has finished its work."""
    from .. import backend

    start = time.perf_counter()
    fn()
    backend.synchronize()
    if _torch_synchronize is not None:
        _torch_synchronize()
    return time.perf_counter() - start


def _torch_network(torch: Any, model: Any) -> Any:
    """``model`` (an MlpMixer or a ResNet) as the same PyTorch nn.Module, with its weights (tools/twin.py)."""
    from .twin import torch_network

    return torch_network(torch, model, "float32")


def measure(config: str, batch_size: int, image_size: int, repeats: int, use_torch: bool) -> dict[str, Any]:
    """Time tinymixer (and PyTorch) on one size; returns a dict of results."""
    import numpy as np

    import tinymixer as tm
    from tinymixer.chunks import batch_shards
    from tinymixer.nn.architectures import make_model
    from tinymixer.training.train import train_step

    global _torch_synchronize
    model = make_model(config, num_classes=10, image_size=image_size, seed=0)
    on_gpu = model.xp is not np
    rng = np.random.default_rng(0)
    model.params["head/kernel"][...] = model.xp.asarray(  # a non-zero head, so the logits comparison means something
        0.02 * rng.standard_normal(model.params["head/kernel"].shape), dtype=model.dtype)
    host_images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    images = model.xp.asarray(host_images)  # on a GPU, already there (as PyTorch's are): the step is timed, not a copy
    optimizer = tm.SGD(momentum=0.9)
    flops_step = 3 * model.flops_per_image() * batch_size
    result: dict[str, Any] = {"config": config, "batch_size": batch_size, "params": model.num_params(),
                              "flops_per_step": flops_step}

    def tm_train() -> None:
        train_step(model, optimizer, images, labels, lr=1e-3, clip=1.0)

    def tm_infer() -> None:
        model.forward(images, train=False)

    runners = {"tinymixer": (tm_train, tm_infer)}
    if on_gpu and getattr(model.xp, "standin", None) is not None:  # what a step asks of the device, counted
        counts = model.xp.standin.COUNTS
        tm_train()
        counts.reset()
        tm_train()
        measured = counts.snapshot()
        result["array_calls_per_step"], result["kernel_launches_per_step"] = measured["calls"], measured["launches"]
    if use_torch:
        import torch

        device = "cuda" if on_gpu else "cpu"
        net = _torch_network(torch, model).to(device)
        t_images, t_labels = torch.from_numpy(host_images).to(device), torch.from_numpy(labels).to(device)
        _torch_synchronize = torch.cuda.synchronize if on_gpu else None
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            ours, theirs = tm.to_host(model.forward(images, train=False)), net(t_images).cpu().numpy()
        result["logits_max_abs_difference"] = float(np.abs(ours - theirs).max())
        if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"PyTorch and tinymixer disagree on {config}: max |difference| "
                               f"{result['logits_max_abs_difference']:.2e}; timings would compare different work")
        t_opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def torch_train() -> None:
            t_opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(t_images), t_labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            t_opt.step()

        def torch_infer() -> None:
            with torch.no_grad():
                net(t_images)

        runners["pytorch"] = (torch_train, torch_infer)

    for train, infer in runners.values():  # warm up
        train()
        infer()
    samples: dict[str, list[float]] = {f"{n}_{k}": [] for n in runners for k in ("train", "infer")}
    for _ in range(repeats):  # interleaved: both frameworks see the same machine state
        for name, (train, infer) in runners.items():
            samples[f"{name}_train"].append(_timed(train))
            samples[f"{name}_infer"].append(_timed(infer))
    if on_gpu:  # device memory after the steps: CuPy's pool (what it holds), PyTorch's peak allocation
        result["tinymixer_gpu_pool_mb"] = model.xp.get_default_memory_pool().total_bytes() / 2**20
        if use_torch:
            result["pytorch_gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for key, values in samples.items():
        result[f"{key}_ms"] = _median_ms(values)
        result[f"{key}_spread_ms"] = 1000 * (max(values) - min(values))
    result["samples_ms"] = {key: [1000 * v for v in values] for key, values in samples.items()}
    if not on_gpu:  # the step's matrix multiplies as they run in it (tools/profile.py): the floor of the ratio
        from .profile import fused_step_ms, gemm_ms, one_pass_ms, profile_step

        calls: list = []
        shards = len(batch_shards(batch_size, np))
        profile = result["tinymixer_train_profile_ms"] = profile_step(tm_train, steps=3, calls=calls, shards=shards)
        result["gemm_share"] = gemm_ms(profile) / profile["step"]  # a share: the profiled steps' pace cancels out
        result["gemm_alone_ms"] = result["gemm_share"] * result["tinymixer_train_ms"]
        # the step with each elementwise layer one pass over its arrays (what fused kernels would leave)
        result["fused_share"] = fused_step_ms(profile, one_pass_ms(calls)) / profile["step"]
        result["fused_step_ms"] = result["fused_share"] * result["tinymixer_train_ms"]
        if use_torch:
            result["gemm_floor_ratio"] = result["gemm_alone_ms"] / result["pytorch_train_ms"]
            result["fused_floor_ratio"] = result["fused_step_ms"] / result["pytorch_train_ms"]
    result["tinymixer_train_images_per_s"] = batch_size / (result["tinymixer_train_ms"] / 1000)
    result["tinymixer_train_gflops"] = flops_step / (result["tinymixer_train_ms"] / 1000) / 1e9
    if use_torch:
        result["train_ratio"] = result["tinymixer_train_ms"] / result["pytorch_train_ms"]
        result["infer_ratio"] = result["tinymixer_infer_ms"] / result["pytorch_infer_ms"]
    return result


def memory_worker(config: str, framework: str, batch_size: int, image_size: int) -> float:
    """Peak resident memory (MB) of building one framework's model and running three training steps, above the
    process's memory before the model existed. Run in a process of its own, so nothing else is counted."""
    import numpy as np

    import tinymixer as tm
    from tinymixer.nn.architectures import make_model
    from tinymixer.training.train import train_step

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)  # start BLAS's threads before the baseline
    if framework == "pytorch":  # likewise PyTorch's lazy start-up (thread pools, kernels): not the model's cost
        import torch

        w = torch.ones(4, 3, 2, 2, requires_grad=True)
        torch.nn.functional.conv2d(torch.ones(1, 3, 4, 4), w).sum().backward()
    before = _peak_memory_reset()
    if before is None:
        return float("nan")
    model = make_model(config, num_classes=10, image_size=image_size, seed=0)
    if framework == "tinymixer":
        optimizer = tm.SGD(momentum=0.9)
        for _ in range(3):
            train_step(model, optimizer, images, labels, lr=1e-3, clip=1.0)
    else:
        net = _torch_network(torch, model)
        del model
        t_images, t_labels = torch.from_numpy(images), torch.from_numpy(labels)
        t_opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        for _ in range(3):
            t_opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(t_images), t_labels).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            t_opt.step()
    return (_proc_status("VmHWM") - before) / 2**20


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    import tinymixer as tm
    from tinymixer.chunks import batch_shards

    tm.set_backend(args.backend)
    on_gpu = tm.backend_name() == "cupy"
    use_torch, torch_note = not args.no_torch, None
    if use_torch:
        try:
            import torch

            torch.set_num_threads(args.threads[0])
            if on_gpu and not torch.cuda.is_available():
                use_torch, torch_note = False, "PyTorch has no CUDA device here: no comparison on the GPU"
        except ImportError:
            use_torch = False
    info: dict[str, Any] = {"threads": args.threads[0], "backend": tm.backend_name(), "numpy": np.__version__,
                            "torch": __import__("torch").__version__ if use_torch else None,
                            "gemm_gflops_samples": _gemm_gflops(tm.get_backend()),
                            "blas": _gpu_name() if on_gpu else blas_description(), "torch_note": torch_note,
                            "blas_libraries": _blas_libraries(), "torch_blas": _torch_blas() if use_torch else None,
                            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                            "blas_thread_sleep": {k: os.environ.get(k) for k in tm.BLAS_THREADS_SLEEP_AT_ONCE},
                            "batch_shards": len(batch_shards(args.batch_size, tm.get_backend()))}
    info["gemm_gflops"] = max(info["gemm_gflops_samples"])
    results = []
    for config in args.configs:
        r = measure(config, args.batch_size, args.image_size, args.repeats, use_torch)
        r["fraction_of_gemm_peak"] = r["tinymixer_train_gflops"] / info["gemm_gflops"]
        results.append(r | {"threads": args.threads[0]})
    return {"machine": info, "results": results}


def _loaded_blas() -> list[dict[str, Any]] | None:
    """threadpoolctl's records of the BLAS libraries loaded in this process, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def _blas_libraries() -> list[str]:
    """The BLAS libraries loaded, by threadpoolctl's names ("openblas", "mkl", ...); empty if it can't tell."""
    return sorted({str(b.get("internal_api")) for b in _loaded_blas() or []})


def _torch_blas() -> str | None:
    """The BLAS PyTorch's CPU build calls (its build configuration's BLAS_INFO: "mkl" for the PyPI wheels)."""
    import torch

    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found.group(1) if found else None


def _different_blas_note(machine: dict[str, Any]) -> str | None:
    """A warning when tinymixer's NumPy and PyTorch call different BLAS libraries: the ratio then measures the two
    libraries' matrix multiplies as much as the code around them."""
    torch_blas, ours = machine.get("torch_blas"), machine.get("blas_libraries") or []
    if machine.get("backend") != "numpy" or not torch_blas or not ours or torch_blas in ours:
        return None
    return (f"note: NumPy calls {'/'.join(ours)} and PyTorch calls {torch_blas}: different BLAS libraries, so the "
            "ratios include the difference between their matrix multiplies (docs/performance.md)")


def blas_description() -> str:
    """Which BLAS library, kernel and thread count actually loaded (needs threadpoolctl, as numpy.show_runtime)."""
    blas = _loaded_blas()
    if blas is None:
        return "unknown (pip install threadpoolctl to see it)"
    return "; ".join(" ".join([str(b.get("internal_api")), str(b.get("version"))]
                              + [f"{key} {b[key]}" for key in ("architecture", "threading_layer") if b.get(key)]
                              + [f"threads {b.get('num_threads')}"]) for b in blas) or "none found"


# ----------------------------------------------------------------------------------------------------------------
# Can the timings be trusted? Pure functions of the recorded samples (the tests give them made-up ones).

# A timed quantity is unstable when its repeats spread over more than this fraction of their median:
# (max - min) / median. The table is read for differences of 1-10% between tinymixer and PyTorch (docs/performance.md).
# Noise spread evenly over 20% of the median gives a median of 7 a standard deviation of 3%, and
# the ratio of two such medians about 5%: as large as what is measured. A 2-core machine shared with other work
# measured spreads of 31-139% for steps of 150-5000 ms.
SPREAD_LIMIT = 0.20
# The GEMM probe on N threads should run near N/M times its rate on M < N threads: a large matrix multiply
# scales almost linearly on free cores (from 1 to 2 threads: 0.92-1.01 of linear with OpenBLAS on the
# development machine). Below 0.75 of linear the threads did not get a free core each -- other work on the
# machine, or SMT siblings of one core -- and nothing timed on them compares cleanly (the shared machine: 0.38).
GEMM_SCALING_LIMIT = 0.75
# The same work taking this many times longer on more threads than on fewer: the threads competed with other
# work (a reported run: PyTorch's step 1569 ms on 2 threads against 105 ms on 1, a "ratio" of 0.07).
SLOWDOWN_LIMIT = 1.5

TIMED = {"tinymixer_train": "tinymixer train step", "pytorch_train": "PyTorch train step",
         "tinymixer_infer": "tinymixer inference", "pytorch_infer": "PyTorch inference"}


def relative_spread(samples: list[float]) -> float | None:
    """(max - min) / median of repeated measurements of one quantity (times or rates); None for fewer than two.

    0 for identical repeats. One repeat far off the others makes it large although the median hardly moves:
    that repeat says the machine was doing other work during the measurement, so it is flagged all the same."""
    if len(samples) < 2:
        return None
    ordered = sorted(samples)
    return (ordered[-1] - ordered[0]) / ordered[len(ordered) // 2]


def gemm_scaling(gflops_by_threads: dict[int, float]) -> dict[int, float]:
    """For each thread count but the smallest, the GEMM rate's gain over the smallest count's rate as a fraction
    of linear scaling: (rate_N / rate_M) / (N / M). 1.0 is linear; below M/N more threads were slower."""
    if not gflops_by_threads:
        return {}
    fewest = min(gflops_by_threads)
    base = gflops_by_threads[fewest]
    return {n: (rate / base) / (n / fewest) for n, rate in gflops_by_threads.items() if n != fewest}


def _where(threads: int, config: str | None = None) -> str:
    return (f"{config}, " if config else "") + f"{threads} thread{'s' * (threads != 1)}"


def assess_stability(runs: list[dict[str, Any]], spread_limit: float = SPREAD_LIMIT,
                     scaling_limit: float = GEMM_SCALING_LIMIT, slowdown_limit: float = SLOWDOWN_LIMIT) -> list[str]:
    """Judge every timing of the benchmark's runs (one run per thread count, as ``worker`` returns them).

    Adds to each run's ``machine``: ``gemm_spread``, ``gemm_scaling`` (``gemm_scaling``'s number; None for the
    fewest threads) and the limits. Adds to each result ``stability = {"stable", "spreads", "unstable"}``:
    ``spreads`` maps each timed quantity to ``relative_spread`` of its repeats; ``unstable`` maps what failed a
    check to the reasons why: a timed quantity (its spread, or a slowdown with more threads), ``gemm_scaling``
    (the cores were not free: every ratio of the row is void) or ``gemm_spread`` (the "of GEMM" share is
    doubtful). Returns the reasons as footnotes for the table, each once."""
    machines = {run["machine"]["threads"]: run["machine"] for run in runs}
    scaling = gemm_scaling({n: m["gemm_gflops"] for n, m in machines.items()})
    machine_problems: dict[int, dict[str, list[str]]] = {}
    for threads, m in machines.items():
        m["gemm_spread"] = relative_spread(m.get("gemm_gflops_samples", []))
        m["gemm_scaling"] = scaling.get(threads)
        m["stability_limits"] = {"spread": spread_limit, "gemm_scaling": scaling_limit, "slowdown": slowdown_limit}
        problems = machine_problems[threads] = {}
        if m["gemm_scaling"] is not None and m["gemm_scaling"] < scaling_limit:
            fewest = min(machines)
            problems["gemm_scaling"] = [
                f"{threads} threads: float32 GEMM {m['gemm_gflops']:.0f} GFLOP/s against "
                f"{machines[fewest]['gemm_gflops']:.0f} on {fewest}, {m['gemm_scaling']:.2f} of linear scaling "
                f"(limit {scaling_limit}): the threads did not get a free core each (other work on the machine, or "
                f"SMT siblings); no ratio on {threads} threads is reported"]
        if m["gemm_spread"] is not None and m["gemm_spread"] > spread_limit:
            problems["gemm_spread"] = [
                f"{_where(threads)}: the GEMM probe's {len(m['gemm_gflops_samples'])} repeats spread over "
                f"{100 * m['gemm_spread']:.0f}% of their median (limit {100 * spread_limit:.0f}%), so the 'of GEMM' "
                "share is doubtful"]
    medians = {(r["config"], run["machine"]["threads"], q): r[f"{q}_ms"] for run in runs for r in run["results"]
               for q in TIMED if r.get(f"{q}_ms") is not None}
    notes: list[str] = []
    for run in runs:
        threads = run["machine"]["threads"]
        for r in run["results"]:
            samples = r.get("samples_ms", {})
            spreads = {q: relative_spread(values) for q, values in samples.items()}
            unstable: dict[str, list[str]] = {}
            for q, spread in spreads.items():
                if spread is not None and spread > spread_limit:
                    unstable.setdefault(q, []).append(
                        f"{_where(threads, r['config'])}, {TIMED.get(q, q)}: its {len(samples[q])} repeats spread "
                        f"over {100 * spread:.0f}% of their median (limit {100 * spread_limit:.0f}%)")
            for (config, fewer, q), before in medians.items():
                now = medians.get((r["config"], threads, q))
                if config == r["config"] and fewer < threads and now is not None and now > slowdown_limit * before:
                    unstable.setdefault(q, []).append(
                        f"{_where(threads, config)}, {TIMED[q]}: {now:.0f} ms, {now / before:.2f}x its {before:.0f} ms "
                        f"on {fewer} (limit {slowdown_limit}x): more threads were slower, so they competed with other "
                        "work")
            unstable.update(machine_problems[threads])
            r["stability"] = {"stable": not unstable, "spreads": spreads, "unstable": unstable}
            notes += [text for reasons in unstable.values() for text in reasons if text not in notes]
    return notes


def ratio_is_void(result: dict[str, Any], kind: str) -> bool:
    """Whether the ``kind`` ("train" or "infer") ratio of an assessed result rests on an unstable timing."""
    unstable = result.get("stability", {}).get("unstable", {})
    return any(key in unstable for key in (f"tinymixer_{kind}", f"pytorch_{kind}", "gemm_scaling"))


# ----------------------------------------------------------------------------------------------------------------
# The driver: one worker process per thread count, then a table


def _format_table(runs: list[dict[str, Any]]) -> str:
    """The results as a table; a timing that failed a stability check has a "!", a ratio resting on one reads
    "unstable" (``assess_stability`` must have run)."""
    header = ("size", "thr", "train ms", "torch ms", "ratio", "floor", "fused", "infer ms", "torch ms", "ratio",
              "img/s", "GFLOP/s", "of GEMM", "peak MB", "torch MB")
    lines = [" | ".join(header), " | ".join("-" * len(h) for h in header)]
    for run in runs:
        for r in run["results"]:
            unstable = r.get("stability", {}).get("unstable", {})

            def get(key: str, fmt: str, r: dict = r, unstable: dict = unstable) -> str:
                if r.get(key) is None:
                    return "-"
                flag = "!" if key.removesuffix("_ms") in unstable else ""
                return format(r[key], fmt) + flag

            def ratio(kind: str, r: dict = r) -> str:
                return "unstable" if r.get(f"{kind}_ratio") is not None and ratio_is_void(r, kind) \
                    else get(f"{kind}_ratio", ".2f")

            of_gemm = f"{100 * r['fraction_of_gemm_peak']:.0f}%" + (
                "!" if {"gemm_spread", "gemm_scaling", "tinymixer_train"} & set(unstable) else "")
            lines.append(" | ".join([
                r["config"], str(r["threads"]) + ("!" if "gemm_scaling" in unstable else ""),
                get("tinymixer_train_ms", ".0f"), get("pytorch_train_ms", ".0f"), ratio("train"),
                *("unstable" if r.get(key) is not None and ratio_is_void(r, "train") else get(key, ".2f")
                  for key in ("gemm_floor_ratio", "fused_floor_ratio")),
                get("tinymixer_infer_ms", ".0f"), get("pytorch_infer_ms", ".0f"), ratio("infer"),
                get("tinymixer_train_images_per_s", ".0f"), get("tinymixer_train_gflops", ".0f"), of_gemm,
                get("tinymixer_train_peak_mb", ".0f") if "tinymixer_gpu_pool_mb" not in r
                else get("tinymixer_gpu_pool_mb", ".0f"),
                get("pytorch_train_peak_mb", ".0f") if "tinymixer_gpu_pool_mb" not in r
                else get("pytorch_gpu_peak_mb", ".0f")]))
    return "\n".join(lines)


def _legend(repeats: int) -> str:
    """What the table's columns are, printed under it."""
    return "\n".join([
        f"ratio = tinymixer time / PyTorch time (below 1: tinymixer is faster); times are medians of {repeats} "
        "interleaved runs",
        "floor = the step's matrix multiplies alone (their share of a profiled tinymixer step, tools/profile.py, "
        "times the step) / PyTorch's step: no step of this arithmetic on this BLAS does better",
        "fused = the same step with each elementwise layer (GELU, LayerNorm, GroupNorm, dropout) one pass over its "
        "arrays, as a compiled fused kernel would make it (tools/profile.py) / PyTorch's step: what NumPy's "
        "one pass per operation costs is the gap between this and the ratio",
        "GFLOP/s = the model's matrix-multiply FLOPs in one training step (3x the forward's) / tinymixer's median "
        "step time",
        "of GEMM = that rate as a share of this machine's float32 GEMM rate on as many threads (best of 5 2048^3 "
        "matrix multiplies, in the header line): the part of the matrix multiplies' best speed the whole step reaches",
        "peak MB = peak resident memory of model + optimiser + 3 training steps, each framework in a process of its "
        "own (on a GPU: CuPy's memory pool after the timed steps, and PyTorch's peak allocation)",
        f"! = a timing failed a stability check (below); \"unstable\" = a ratio not reported because one of its "
        f"timings did (limits: spread of the repeats {100 * SPREAD_LIMIT:.0f}% of their median, GEMM scaling "
        f"{GEMM_SCALING_LIMIT} of linear, {SLOWDOWN_LIMIT}x slower with more threads)",
    ])


def _parser() -> Parser:
    from ..nn.architectures import MODEL_NAMES

    p = Parser(prog="python -m tinymixer.tools.bench", description=__doc__.split("\n\n")[0],
                epilog="examples:\n" + __doc__.split("\n\n")[1].rstrip(), formatter_class=HelpWithExamples)
    p.add_argument("--configs", nargs="+", default=["tiny/4", "small/4"], choices=MODEL_NAMES, metavar="SIZE",
                   help=f"model sizes to time (Mixers and CNNs), of: {', '.join(MODEL_NAMES)}")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per training step")
    p.add_argument("--image-size", type=positive_int, default=32,
                   help="image height and width in pixels (a multiple of every size's patch size)")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2],
                   help="thread counts to measure, each in a fresh process")
    p.add_argument("--repeats", type=positive_int, default=7,
                   help="timed repetitions of each step (the median is reported, their spread judged)")
    add_backend_option(p, fallback="numpy")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--json", type=Path, help="also write all results, samples and stability verdicts to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    return p


def _check_args(p: Parser, args: argparse.Namespace) -> None:
    """Refuse, before anything runs, the option values that would only fail inside a worker."""
    from .. import set_backend
    from ..nn.mixer import SIZES

    for config in (c for c in args.configs if c in SIZES):  # a Mixer's patches must tile the image; a CNN takes any
        patch = SIZES[config].patch_size
        if args.image_size % patch:
            p.error(f"--image-size {args.image_size} is not a multiple of {config}'s patch size {patch}")
    if args.json is not None and not args.json.parent.is_dir():
        p.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.backend == "cupy":
        try:
            set_backend("cupy")
        except RuntimeError as exc:
            p.error(f"--backend cupy: {exc}")


def _gpu_name() -> str:
    """The GPU's name and CUDA runtime, for the header line of a run on CuPy."""
    from ..backend import get_backend

    cupy = get_backend()  # the module backend.py imported (the only one that imports CuPy)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{name} (cuBLAS, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line (``python -m tinymixer.tools.bench --help``); returns the exit code."""
    p = _parser()
    args = p.parse_args(argv)
    tune_host()  # as the programs run (the workers also get the BLAS settings in their environment, below)
    if args.memory_of:
        print(json.dumps(memory_worker(args.configs[0], args.memory_of, args.batch_size, args.image_size)))
        return 0
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    _check_args(p, args)
    if args.backend == "cupy" and len(args.threads) > 1:  # the GPU's speed does not depend on the CPU's threads
        print(f"--backend cupy: one run on the GPU (--threads {' '.join(map(str, args.threads))} is for the CPU)")
        args.threads = args.threads[:1]
    runs = []
    for threads in args.threads:
        # each worker runs as the programs do: BLAS threads that sleep at once (set before its NumPy loads)
        env = dict(tuned_environment(), **{v: str(threads) for v in THREAD_VARIABLES})
        command = [sys.executable, "-m", "tinymixer.tools.bench", "--worker", "--threads", str(threads), "--configs",
                   *args.configs, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                   "--repeats", str(args.repeats), "--backend", args.backend] + (["--no-torch"] * args.no_torch)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            return done.returncode
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for r in runs[-1]["results"]:  # peak memory: each framework in a process of its own (on a GPU: measured above)
            for framework in [] if args.backend == "cupy" else ["tinymixer"] + (["pytorch"] * ("train_ratio" in r)):
                mem = subprocess.run(command[:3] + ["--memory-of", framework, "--configs", r["config"],
                                                    "--batch-size", str(args.batch_size), "--image-size",
                                                    str(args.image_size)], env=env, capture_output=True, text=True)
                r[f"{framework}_train_peak_mb"] = json.loads(mem.stdout) if mem.returncode == 0 else None
        machine = runs[-1]["machine"]
        print(f"threads {threads}: backend {machine['backend']}, numpy {machine['numpy']}, torch {machine['torch']}, "
              f"BLAS {machine['blas']}, float32 GEMM {machine['gemm_gflops']:.0f} GFLOP/s, "
              f"batch in {machine['batch_shards']} shard(s)"
              + "".join(f", {k}={v}" for k, v in machine["blas_thread_sleep"].items())
              + (f", OPENBLAS_CORETYPE={machine['openblas_coretype']}" if machine["openblas_coretype"] else ""))
    note = _different_blas_note(runs[0]["machine"])
    if note:
        print(note)
    footnotes = assess_stability(runs)
    print()
    print(_format_table(runs))
    print()
    print(_legend(args.repeats))
    for r in (r for run in runs for r in run["results"] if "array_calls_per_step" in r):
        print(f"{r['config']}: {r['array_calls_per_step']:,} array calls and {r['kernel_launches_per_step']:,} kernel "
              f"launches per training step (counted on the CuPy stand-in)")
    if runs[0]["machine"].get("torch_note"):
        print(runs[0]["machine"]["torch_note"])
    if footnotes:
        print("\nUnstable timings (the machine was busy with other work? rerun on a quiet machine):")
        print("\n".join(f"! {text}" for text in footnotes))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
