"""Benchmark: tinymixer's training step and inference, against PyTorch's eager CPU step when PyTorch is installed.

    python -m tinymixer.bench                                   # tiny/4 and small/4, batch 128, 1 and 2 threads
    python -m tinymixer.bench --configs micro/4 --threads 2 --json bench.json

For each thread count a fresh worker process runs with the BLAS and OpenMP thread counts set (so that the
libraries see them when they load); it measures, per model size:
- one training step (forward, loss, backward, clipping, SGD-momentum update) and one inference pass, medians of
  ``--repeats``, tinymixer and PyTorch interleaved in the same process so both see the same machine state;
- images/s, the GFLOP/s achieved on the model's matrix-multiply FLOPs, and that rate as a fraction of the machine's
  own float32 GEMM rate (measured here on a 2048^3 matrix multiply);
- peak memory: each framework in a process of its own builds the model and runs three training steps; the peak
  resident memory above the process's memory before the model existed (Linux: the VmHWM counter);
- PyTorch: the identical network (nn.Conv2d stem, LayerNorm, Linear, tanh GELU) with the same weights, whose
  logits are checked against tinymixer's before anything is timed.
tinymixer runs as users get it: with several threads the batch is cut into one shard per thread
(``chunks.for_shards``); the header line of each thread count says into how many.

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


def _gemm_gflops(np: Any, n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b, out = a.copy(), np.empty_like(a)
    np.matmul(a, b, out=out)
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn: Any) -> float:
    from . import backend

    start = time.perf_counter()
    fn()
    backend.synchronize()
    return time.perf_counter() - start


def _torch_mixer(torch: Any, model: Any) -> Any:
    """The same network as ``model`` as a plain PyTorch nn.Module, loaded with model's weights (float32)."""
    nn = torch.nn

    class MlpBlock(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU("tanh")

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class MixerBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = model.hidden_dim
            self.ln0, self.ln1 = nn.LayerNorm(c, eps=1e-6), nn.LayerNorm(c, eps=1e-6)
            self.tokens = MlpBlock(model.num_tokens, model.tokens_mlp_dim)
            self.channels = MlpBlock(c, model.channels_mlp_dim)

        def forward(self, x):
            x = x + self.tokens(self.ln0(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channels(self.ln1(x))

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            p, c = model.patch_size, model.hidden_dim
            self.stem = nn.Conv2d(model.in_channels, c, p, stride=p)
            self.blocks = nn.ModuleList(MixerBlock() for _ in range(model.num_blocks))
            self.ln = nn.LayerNorm(c, eps=1e-6)
            self.head = nn.Linear(c, model.num_classes)

        def forward(self, images):  # (B, H, W, C) like tinymixer
            x = self.stem(images.permute(0, 3, 1, 2))  # (B, C, H/P, W/P)
            x = x.flatten(2).transpose(1, 2)  # (B, S, C)
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x).mean(dim=1))

    net = Mixer()
    p = {k: torch.tensor(v) for k, v in _host_params(model).items()}
    with torch.no_grad():
        net.stem.weight.copy_(p["stem/kernel"].permute(3, 2, 0, 1))
        net.stem.bias.copy_(p["stem/bias"])
        for i, block in enumerate(net.blocks):
            b = f"MixerBlock_{i}"
            for ln, name in [(block.ln0, "LayerNorm_0"), (block.ln1, "LayerNorm_1")]:
                ln.weight.copy_(p[f"{b}/{name}/scale"])
                ln.bias.copy_(p[f"{b}/{name}/bias"])
            for mlp, name in [(block.tokens, "token_mixing"), (block.channels, "channel_mixing")]:
                for fc, dense in [(mlp.fc1, "Dense_0"), (mlp.fc2, "Dense_1")]:
                    fc.weight.copy_(p[f"{b}/{name}/{dense}/kernel"].T)
                    fc.bias.copy_(p[f"{b}/{name}/{dense}/bias"])
        net.ln.weight.copy_(p["pre_head_layer_norm/scale"])
        net.ln.bias.copy_(p["pre_head_layer_norm/bias"])
        net.head.weight.copy_(p["head/kernel"].T)
        net.head.bias.copy_(p["head/bias"])
    return net


def _host_params(model: Any) -> dict[str, Any]:
    from .backend import to_host

    return {k: to_host(v) for k, v in model.params.items()}


def measure(config: str, batch_size: int, image_size: int, repeats: int, use_torch: bool) -> dict[str, Any]:
    """Time tinymixer (and PyTorch) on one size; returns a dict of results."""
    import numpy as np

    import tinymixer as tm
    from tinymixer.train import train_step

    model = tm.MlpMixer.from_name(config, num_classes=10, image_size=image_size, seed=0)
    rng = np.random.default_rng(0)
    model.params["head/kernel"][...] = model.xp.asarray(  # a non-zero head, so the logits comparison means something
        0.02 * rng.standard_normal(model.params["head/kernel"].shape), dtype=model.dtype)
    images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    optimizer = tm.SGD(momentum=0.9)
    flops_step = 3 * model.flops_per_image() * batch_size
    result: dict[str, Any] = {"config": config, "batch_size": batch_size, "params": model.num_params(),
                              "flops_per_step": flops_step}

    def tm_train() -> None:
        train_step(model, optimizer, images, labels, lr=1e-3, clip=1.0)

    def tm_infer() -> None:
        model.forward(images, train=False)

    runners = {"tinymixer": (tm_train, tm_infer)}
    if use_torch:
        import torch

        net = _torch_mixer(torch, model)
        t_images, t_labels = torch.from_numpy(images), torch.from_numpy(labels)
        with torch.no_grad():
            ours, theirs = tm.to_host(model.forward(images, train=False)), net(t_images).numpy()
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
    for key, values in samples.items():
        result[f"{key}_ms"] = _median_ms(values)
        result[f"{key}_spread_ms"] = 1000 * (max(values) - min(values))
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
    from tinymixer.train import train_step

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
    model = tm.MlpMixer.from_name(config, num_classes=10, image_size=image_size, seed=0)
    if framework == "tinymixer":
        optimizer = tm.SGD(momentum=0.9)
        for _ in range(3):
            train_step(model, optimizer, images, labels, lr=1e-3, clip=1.0)
    else:
        net = _torch_mixer(torch, model)
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
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch

            torch.set_num_threads(args.threads[0])
        except ImportError:
            use_torch = False
    info: dict[str, Any] = {"threads": args.threads[0], "backend": tm.backend_name(), "numpy": np.__version__,
                            "torch": __import__("torch").__version__ if use_torch else None,
                            "gemm_gflops": _gemm_gflops(np), "blas": _blas_description(),
                            "blas_libraries": _blas_libraries(), "torch_blas": _torch_blas() if use_torch else None,
                            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                            "blas_thread_sleep": {k: os.environ.get(k) for k in tm.BLAS_THREADS_SLEEP_AT_ONCE},
                            "batch_shards": len(batch_shards(args.batch_size, tm.get_backend()))}
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
            "ratios include the difference between their matrix multiplies (README, Performance)")


def _blas_description() -> str:
    """Which BLAS library, kernel and thread count actually loaded (needs threadpoolctl, as numpy.show_runtime)."""
    blas = _loaded_blas()
    if blas is None:
        return "unknown (pip install threadpoolctl to see it)"
    return "; ".join(" ".join([str(b.get("internal_api")), str(b.get("version"))]
                              + [f"{key} {b[key]}" for key in ("architecture", "threading_layer") if b.get(key)]
                              + [f"threads {b.get('num_threads')}"]) for b in blas) or "none found"


# ----------------------------------------------------------------------------------------------------------------
# The driver: one worker process per thread count, then a table


def _format_table(runs: list[dict[str, Any]]) -> str:
    header = ("size", "thr", "train ms", "torch ms", "ratio", "infer ms", "torch ms", "ratio", "img/s", "GFLOP/s",
              "of GEMM", "peak MB", "torch MB")
    lines = [" | ".join(header), " | ".join("-" * len(h) for h in header)]
    for run in runs:
        for r in run["results"]:
            def get(key: str, fmt: str, r: dict = r) -> str:
                return format(r[key], fmt) if r.get(key) is not None else "-"
            lines.append(" | ".join([
                r["config"], str(r["threads"]), get("tinymixer_train_ms", ".0f"), get("pytorch_train_ms", ".0f"),
                get("train_ratio", ".2f"), get("tinymixer_infer_ms", ".0f"), get("pytorch_infer_ms", ".0f"),
                get("infer_ratio", ".2f"), get("tinymixer_train_images_per_s", ".0f"),
                get("tinymixer_train_gflops", ".0f"), f"{100 * r['fraction_of_gemm_peak']:.0f}%",
                get("tinymixer_train_peak_mb", ".0f"), get("pytorch_train_peak_mb", ".0f")]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny/4", "small/4"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7, help="timed repetitions (the median is reported)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_of:
        print(json.dumps(memory_worker(args.configs[0], args.memory_of, args.batch_size, args.image_size)))
        return 0
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    runs = []
    for threads in args.threads:
        env = dict(os.environ, **{v: str(threads) for v in THREAD_VARIABLES})
        # (this process imported tinymixer, which put BLAS_THREADS_SLEEP_AT_ONCE in os.environ: the workers inherit it)
        command = [sys.executable, "-m", "tinymixer.bench", "--worker", "--threads", str(threads), "--configs",
                   *args.configs, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
                   "--repeats", str(args.repeats), "--backend", args.backend] + (["--no-torch"] * args.no_torch)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            return done.returncode
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for r in runs[-1]["results"]:  # peak memory: each framework in a process of its own
            for framework in ["tinymixer"] + (["pytorch"] if "train_ratio" in r else []):
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
    print()
    print(_format_table(runs))
    print("\nratio = tinymixer time / PyTorch time (below 1: tinymixer is faster); medians of", args.repeats,
          "interleaved runs; peak MB = peak resident memory of model + optimiser + 3 training steps")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
