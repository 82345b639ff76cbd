"""python -m tinymixer.tools.bench_parallel: data-parallel training measured, and a cost model for many machines.

Measured (``python -m tinymixer.tools.bench_parallel``): one training step of a model (float32, random data) in each
layout of this machine's cores — 1 process x 1 thread, 1 process x T threads, P processes x 1 thread under
``mpiexec`` — with the step's time, the all-reduce's share of it (timed inside the step, so waiting for a slower
rank counts) and the all-reduce alone (after a barrier: the transfer itself), and images/s.

The cost model (``--cost-model``): a ring all-reduce of n bytes over N processes sends 2(N-1)/N x n bytes through
each process's link (a reduce-scatter, then an all-gather), so it takes about

    t_allreduce = 2 (N - 1) / N x n / bandwidth + 2 (N - 1) x latency,

with n = 4 x parameters (float32 gradients). A step on N processes with a global batch B computes B / N images
per process; with no overlap of communication and compute, the scaling efficiency is

    efficiency = t_compute(B / N) / (t_compute(B / N) + t_allreduce(N)).

It stops scaling when B / N gets small (the compute per process shrinks, the all-reduce does not) or when the
bandwidth is low against the parameter count (the all-reduce alone outlasts the compute).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..util.cli import Parser
from ..util.host import tune_host, tuned_environment

# Links (bytes/s, latency s): nominal line rates; real all-reduce bus bandwidth is lower, so the predictions are
# upper bounds on efficiency.
LINKS = {"10 GbE": (1.25e9, 20e-6), "100 Gb InfiniBand": (12.5e9, 2e-6), "NVLink (H100, 450 GB/s)": (450e9, 5e-6)}
PROCESSES = (8, 64, 512)


def ring_allreduce_seconds(nbytes: float, processes: int, bandwidth: float, latency: float = 0.0) -> float:
    """Time of a ring all-reduce of ``nbytes`` over ``processes`` (0 for one process)."""
    if processes <= 1:
        return 0.0
    return 2 * (processes - 1) / processes * nbytes / bandwidth + 2 * (processes - 1) * latency


def scaling_efficiency(seconds_per_image: float, global_batch: int, processes: int, nbytes: float,
                       bandwidth: float, latency: float = 0.0) -> float:
    """Speed-up over one process divided by ``processes``, for a fixed global batch, without overlap."""
    compute = seconds_per_image * global_batch / processes
    return compute / (compute + ring_allreduce_seconds(nbytes, processes, bandwidth, latency))


# ----------------------------------------------------------------------------------------------------------------
# One layout, measured (runs in each process of the layout)


def measure(config: str, batch_size: int, steps: int, image_size: int) -> dict | None:
    """Time ``steps`` training steps (after 2 to warm up) in the current world; rank 0 returns the medians."""
    import tinymixer as tm
    from tinymixer.chunks import num_threads
    from tinymixer.nn.layers import softmax_cross_entropy
    from tinymixer.training import distributed

    comm = distributed.init()
    tm.set_backend("numpy")
    model = tm.MlpMixer.from_name(config, num_classes=10, image_size=image_size, seed=0)
    optimizer = tm.SGD(momentum=0.9)
    rows = distributed.shard_of(batch_size, comm)
    rng = np.random.default_rng(comm.rank)
    images = rng.uniform(-1, 1, (rows.stop - rows.start, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, len(images))
    step_times, reduce_times = [], []
    for step in range(steps + 2):
        comm.barrier()
        t0 = time.perf_counter()
        logits = model.forward(images)
        _, dlogits = softmax_cross_entropy(logits, labels)
        model.backward(dlogits * (len(labels) / batch_size))
        t1 = time.perf_counter()
        comm.allreduce_sum_(model.grad_buffer)
        t2 = time.perf_counter()
        tm.clip_by_global_norm(model.grads, 1.0)
        optimizer.step(model.params, model.grads, 0.01)
        t3 = time.perf_counter()
        if step >= 2:
            step_times.append(t3 - t0)
            reduce_times.append(t2 - t1)
    alone = []
    for _ in range(steps):  # the all-reduce alone: everyone ready, nothing else running
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_sum_(model.grad_buffer)
        alone.append(time.perf_counter() - t0)
    copies, target = [], np.empty_like(model.grad_buffer)
    for _ in range(steps):  # this machine's memory-copy bandwidth: the "link" between processes that share it
        t0 = time.perf_counter()
        np.copyto(target, model.grad_buffer)
        copies.append(time.perf_counter() - t0)
    step_ms = 1e3 * comm.sum(statistics.median(step_times)) / comm.size  # the ranks' mean of their medians
    if not comm.is_root:
        return None
    return {"config": config, "processes": comm.size, "threads": num_threads(), "batch_size": batch_size,
            "parameters": model.num_params(), "gradient_bytes": int(model.grad_buffer.nbytes), "step_ms": step_ms,
            "allreduce_in_step_ms": 1e3 * statistics.median(reduce_times),
            "allreduce_alone_ms": 1e3 * statistics.median(alone), "images_per_sec": batch_size / step_ms * 1e3,
            "flops_per_image": model.flops_per_image(), "copy_bytes_per_sec": model.grad_buffer.nbytes /
            statistics.median(copies), "communicator": comm.name}


def run_layout(processes: int, threads: int, args: argparse.Namespace) -> dict:
    """Measure one layout in fresh processes (mpiexec for more than one)."""
    command = [sys.executable, "-m", "tinymixer.tools.bench_parallel", "--worker", "--config", args.config,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--image-size", str(args.image_size)]
    if processes > 1:
        command = [mpiexec(), "-n", str(processes)] + command
    env = tuned_environment({k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))})
    env.update(TINYMIXER_THREADS=str(threads), OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise SystemExit("error: no mpiexec found: pip install 'tinymixer[mpi]' (mpi4py and the MPICH wheel)")
    return found


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------------
# The cost model, as a table

GLOBAL_BATCH = 4096  # the paper's pre-training batch
CPU_NODE_CORES = 64
GPU_TFLOPS = 100.0  # an assumed effective training rate of one data-centre GPU (not measured here)


def cost_model_table(gflops_per_core: float) -> str:
    """Markdown: predicted all-reduce time and scaling efficiency of ``tiny/4`` (32 px) and ``B/16`` (224 px) at
    8, 64 and 512 processes; a process is a 64-core CPU node at ``gflops_per_core`` per core (measured here) on
    Ethernet and InfiniBand, one GPU at GPU_TFLOPS on NVLink. The global batch is GLOBAL_BATCH."""
    import tinymixer as tm

    sizes = {"tiny/4": tm.describe_size("tiny/4", num_classes=10, image_size=32),
             "B/16": tm.describe_size("B/16", num_classes=1000, image_size=224)}
    header = " | ".join(f"N = {n} ({GLOBAL_BATCH // n} images each)" for n in PROCESSES)
    lines = [f"| size | link, process | {header} |", "|---|---|" + "---|" * len(PROCESSES)]
    for name, size in sizes.items():
        nbytes, flops_per_image = 4 * size["params"], 3 * size["flops"]  # training step: forward + backward
        for link, (bandwidth, latency) in LINKS.items():
            gpu = link.startswith("NVLink")
            rate = GPU_TFLOPS * 1e12 if gpu else gflops_per_core * 1e9 * CPU_NODE_CORES
            cells = []
            for n in PROCESSES:
                efficiency = scaling_efficiency(flops_per_image / rate, GLOBAL_BATCH, n, nbytes, bandwidth, latency)
                compute = flops_per_image / rate * GLOBAL_BATCH / n
                reduce_s = ring_allreduce_seconds(nbytes, n, bandwidth, latency)
                cells.append(f"{100 * efficiency:.0f}% ({_ms(compute)} compute, {_ms(reduce_s)} all-reduce)")
            process = "1 GPU" if gpu else f"{CPU_NODE_CORES}-core node"
            lines.append(f"| `{name}` ({nbytes / 1e6:.1f} MB) | {link}, {process} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms" if seconds >= 0.01 else f"{1e3 * seconds:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m tinymixer.tools.bench_parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny/4", help="model size")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=7, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one layout, in this world
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.worker:
        from tinymixer.training import distributed

        tune_host()  # as the programs run (the BLAS settings came in the environment, see run_layout)

        def worker() -> int:
            result = measure(args.config, args.batch_size, args.steps, args.image_size)
            if result is not None:
                print(json.dumps(result))
            return 0

        distributed.run(worker)
    n = cores()
    layouts = [(1, 1)] + ([(1, n), (n, 1)] if n > 1 else [])
    results = [run_layout(p, t, args) for p, t in layouts]
    first = results[0]
    print(f"{args.config}, global batch {args.batch_size}, {args.image_size}x{args.image_size}, float32, "
          f"{first['parameters']:,} parameters ({first['gradient_bytes'] / 1e6:.1f} MB of gradients), median of "
          f"{args.steps} steps; {results[-1]['communicator']}")
    print("\n| processes x threads | step | all-reduce in the step | all-reduce alone (model) | images/s | vs 1 x 1 |")
    print("|---|---|---|---|---|---|")
    for r in results:
        model = ring_allreduce_seconds(r["gradient_bytes"], r["processes"], r["copy_bytes_per_sec"])
        print(f"| {r['processes']} x {r['threads']} | {r['step_ms']:.0f} ms | {r['allreduce_in_step_ms']:.2f} ms "
              f"({100 * r['allreduce_in_step_ms'] / r['step_ms']:.2f}%) | {r['allreduce_alone_ms']:.2f} ms "
              f"({1e3 * model:.2f} ms) | {r['images_per_sec']:.0f} | "
              f"{r['images_per_sec'] / first['images_per_sec']:.2f}x |")
    print("\nall-reduce in the step: timed between backward and update, waiting for the slower rank included; "
          "alone: after a barrier; (model): the ring formula with this machine's memory-copy bandwidth "
          f"({first['copy_bytes_per_sec'] / 1e9:.1f} GB/s) as the link")
    gflops_per_core = first["flops_per_image"] * 3 * first["images_per_sec"] / 1e9
    print(f"\nCost model for many machines ({args.config}'s training step here: {gflops_per_core:.0f} GFLOP/s on one "
          f"core; a GPU assumed at {GPU_TFLOPS:.0f} TFLOP/s; global batch {GLOBAL_BATCH}; no overlap):\n")
    print(cost_model_table(gflops_per_core))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
