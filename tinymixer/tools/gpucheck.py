"""``python -m tinymixer.tools.gpucheck``: the one prepared check of the GPU path, for the day a GPU is there.

Run it first on a machine with an NVIDIA GPU, from a checkout with the test extra installed; it takes a few
minutes on a large GPU and writes one report (``gpucheck.md`` and ``gpucheck.json`` in ``--out``):

1. CuPy: imported, or installed from the package index (``--install``: ``cupy-cuda13x[ctk]`` and NCCL, or the
   CUDA 12 ones with ``--cuda 12``), then the device, its memory and the CUDA versions;
2. the self-check (``python -m tinymixer``) on CuPy: a float64 gradient check and a float32 training step;
3. the GPU tests (``pytest -m gpu``: layer parity with NumPy, a step's budgets, examples/cifar10.py on the device);
4. ``examples/cifar10.py --backend cupy`` for two epochs on a generated data set, stopped after one and resumed:
   the resumed weights must equal the uninterrupted run's bit for bit;
5. timings with synchronisation: a training step and an inference batch of ``tiny/4`` (batch 128, 32x32) and
   ``B/16`` (batch 64, 224x224), images per second, and the memory pool's size after them;
6. the benchmark on the GPU (``python -m tinymixer.tools.bench --backend cupy``): the same networks in PyTorch on
   CUDA, side by side, with GPU memory;
7. the whole test suite with ``TINYMIXER_TEST_BACKEND=cupy`` (every test on the GPU where it builds a model; not
   with ``--quick``).

Each part is PASS or FAIL; the exit code is 1 if any failed. Parts have time limits (``--budget``) so the whole
check fits a short lease on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..util.cli import number

ROOT = Path(__file__).resolve().parents[2]  # the checkout (tests/ and examples/ beside the package)


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; its exit code, seconds and the tail of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **(env or {})})
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout or ""
        code, output = "timeout", output.decode(errors="replace") if isinstance(output, bytes) else output
    return {"command": " ".join(command), "code": code, "seconds": round(time.perf_counter() - start, 1),
            "tail": output[-3000:]}


def part(name: str, result: dict[str, Any]) -> dict[str, Any]:
    result["status"] = result.get("status") or ("PASS" if result.get("code") == 0 else "FAIL")
    print(f"[{result['status']}] {name} ({result.get('seconds', 0)} s)", flush=True)
    return {"name": name, **result}


def cupy_info(install: bool, cuda: str) -> dict[str, Any]:
    """Import CuPy (installing it first if asked and needed) and describe the device."""
    code = ("import cupy, json; d = cupy.cuda.runtime.getDeviceProperties(0); "
            "print(json.dumps({'cupy': cupy.__version__, 'device': d['name'].decode(), "
            "'memory_gb': round(d['totalGlobalMem'] / 2**30, 1), 'runtime': cupy.cuda.runtime.runtimeGetVersion(), "
            "'driver': cupy.cuda.runtime.driverGetVersion(), 'nccl': bool(cupy.cuda.nccl.available), "
            "'kernel': int((cupy.arange(4) * 2).sum())}))")
    probe = run([sys.executable, "-c", code], 120)
    if probe["code"] != 0 and install:
        wheels = [f"cupy-cuda{cuda}x[ctk]", f"nvidia-nccl-cu{cuda}"]
        installed = run([sys.executable, "-m", "pip", "install", "-q", *wheels], 420)
        if installed["code"] != 0:
            return {**installed, "status": "FAIL", "why": "pip could not install " + " ".join(wheels)}
        probe = run([sys.executable, "-c", code], 120)
    if probe["code"] != 0:
        return {**probe, "why": "CuPy cannot run here (see tail); --install installs it from the package index"}
    return {**probe, "info": json.loads(probe["tail"].strip().splitlines()[-1])}


def timings(quick: bool) -> dict[str, Any]:
    """Synchronised timings of training steps and inference batches, and the memory pool's size after them."""
    import tinymixer as tm
    from tinymixer.training.train import train_step

    cupy = tm.set_backend("cupy")  # the module backend.py imported (the only one that imports CuPy)
    cases = [("tiny/4", 32, 128)] + ([] if quick else [("B/16", 224, 64)])
    rows = []
    for name, size, batch in cases:
        rows.append(time_model(cupy, tm, train_step, name, size, batch, 10 if quick else 20))
        print(f"  {rows[-1]}", flush=True)
    return {"code": 0, "rows": rows}


def time_model(cupy: Any, tm: Any, train_step: Any, name: str, size: int, batch: int, repeats: int
               ) -> dict[str, Any]:
    """One model's synchronised training-step and inference times, and the memory pool's size after them."""
    import numpy as np

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    model = tm.MlpMixer.from_name(name, num_classes=10 if size == 32 else 1000, image_size=size)
    optimizer = tm.SGD(momentum=0.9)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, model.num_classes, batch)
    images = cupy.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    tasks = {"train_ms": lambda: train_step(model, optimizer, images, labels, 0.01, 1.0),
             "inference_ms": lambda: model.forward(images, train=False)}
    row: dict[str, Any] = {"model": name, "batch": batch, "image_size": size}
    for label, task in tasks.items():
        for _ in range(3):  # warm-up: kernels compiled, memory pool filled
            task()
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            task()
        cupy.cuda.Device().synchronize()  # the clock is read after the GPU has finished
        row[label] = round(1000 * (time.perf_counter() - start) / repeats, 3)
    row["train_images_per_s"] = round(batch / (row["train_ms"] / 1000))
    row["pool_gb"] = round(pool.total_bytes() / 2**30, 3)
    return row


def resume_check(out: Path, timeout: float) -> dict[str, Any]:
    """examples/cifar10.py --backend cupy on generated shapes: two epochs straight, and one + resume, equal."""
    import numpy as np

    from tinymixer.data import Dataset, save_folder, synthetic_shapes

    images, labels = synthetic_shapes(1200, size=32, seed=0)
    folder = out / "shapes"
    save_folder(folder, Dataset(images[:1000], labels[:1000], images[1000:], labels[1000:],
                                [str(i) for i in range(int(labels.max()) + 1)]))
    base = [sys.executable, "examples/cifar10.py", "--data-dir", str(folder), "--backend", "cupy", "--config",
            "tiny/4", "--epochs", "2", "--batch-size", "100", "--no-progress", "--dropout", "0.1"]
    straight = run(base + ["--out", str(out / "straight")], timeout)
    first = run(base + ["--out", str(out / "split"), "--stop-after-epoch", "1"], timeout)
    resumed = run([sys.executable, "examples/cifar10.py", "--resume", "--out", str(out / "split"), "--backend",
                   "cupy", "--no-progress"], timeout)
    codes = [straight["code"], first["code"], resumed["code"]]
    if codes != [0, 0, 0]:
        return {"code": 1, "seconds": straight["seconds"] + first["seconds"] + resumed["seconds"],
                "tail": "\n".join(r["tail"][-1000:] for r in (straight, first, resumed))}
    a = np.load(out / "straight" / "checkpoint.npz")
    b = np.load(out / "split" / "checkpoint.npz")
    equal = all(np.array_equal(a[k], b[k]) for k in a.files if k != "__meta__")
    return {"code": 0 if equal else 1, "seconds": straight["seconds"] + first["seconds"] + resumed["seconds"],
            "bit_exact": equal, "tail": straight["tail"][-1500:]}


def report(parts: list[dict[str, Any]], out: Path) -> None:
    lines = ["# tinymixer GPU check", ""]
    for p in parts:
        lines.append(f"- **{p['status']}** {p['name']} ({p.get('seconds', 0)} s)" +
                     (f": {p['why']}" if p.get("why") else ""))
    for p in parts:
        if p.get("info"):
            lines += ["", "## Device", "", "```", json.dumps(p["info"], indent=1), "```"]
        if p.get("rows"):
            lines += ["", "## Timings (synchronised)", "",
                      "| model | batch | train ms | img/s | inference ms | pool GB |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['batch']} | {r['train_ms']} | {r['train_images_per_s']} | "
                      f"{r['inference_ms']} | {r['pool_gb']} |" for r in p["rows"]]
        if p.get("table"):
            lines += ["", "## Benchmark against PyTorch (tools.bench --backend cupy)", "", "```", p["table"], "```"]
    for p in parts:
        if p["status"] == "FAIL" and p.get("tail"):
            lines += ["", f"## {p['name']}: output (tail)", "", "```", p["tail"][-2500:], "```"]
    (out / "gpucheck.md").write_text("\n".join(lines) + "\n")
    (out / "gpucheck.json").write_text(json.dumps(parts, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinymixer.tools.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpucheck")),
                        help="where the report goes (default: $OUT, else ./gpucheck)")
    parser.add_argument("--install", action="store_true", help="pip install CuPy with its CUDA libraries if needed")
    parser.add_argument("--cuda", choices=["12", "13"], default="13",
                        help="the CUDA major version to install for (default: 13)")
    parser.add_argument("--quick", action="store_true", help="a shorter check (no suite, small timings)")
    parser.add_argument("--budget", type=number(float, 0, low_open=True), default=460.0,
                        help="seconds for the whole check, shared by its parts (default: 460)")
    parser.add_argument("--tests", default="", metavar="EXPR",
                        help="only the GPU tests that pytest's -k EXPR selects (default: all of them)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: give a folder for gpucheck.md and gpucheck.json")
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    parts = []

    def left(share: float) -> float:
        return max(10.0, share * (deadline - time.perf_counter()))

    info = cupy_info(args.install, args.cuda)
    parts.append(part("CuPy imports and runs a kernel", info))
    if info["status"] != "PASS":
        report(parts, args.out)
        return 1
    env = {"TINYMIXER_BACKEND": "cupy"}
    parts.append(part("self-check on CuPy", run([sys.executable, "-m", "tinymixer"], left(0.1), env)))
    # the test that runs this check does not run it again from here; the GPU tests choose their backends themselves
    inside = {"TINYMIXER_IN_GPUCHECK": "1", "TINYMIXER_TEST_BACKEND": "numpy"}
    select = ["-k", args.tests] if args.tests else []
    parts.append(part("GPU tests (pytest -m gpu)", run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-x",
                                                        *select], left(0.3), inside)))
    with tempfile.TemporaryDirectory() as scratch:
        parts.append(part("cifar10.py --backend cupy: stop, resume, bit-exact", resume_check(Path(scratch),
                                                                                            left(0.3))))
    start = time.perf_counter()
    try:
        timed = timings(args.quick)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the other parts still count
        timed = {"code": 1, "tail": f"{type(exc).__name__}: {exc}"}
    timed["seconds"] = round(time.perf_counter() - start, 1)
    parts.append(part("timings", timed))
    sizes = ["micro/4"] if args.quick else ["tiny/4", "small/4", "cnn-micro", "cnn-tiny"]
    bench = run([sys.executable, "-m", "tinymixer.tools.bench", "--backend", "cupy", "--configs", *sizes,
                 "--repeats", "2" if args.quick else "7", "--json", str(args.out / "bench.json")], left(0.4))
    bench["table"] = "\n".join(line for line in bench["tail"].splitlines() if " | " in line)
    parts.append(part("benchmark against PyTorch on the GPU (tools.bench --backend cupy)", bench))
    if not args.quick:
        parts.append(part("whole suite on CuPy (TINYMIXER_TEST_BACKEND=cupy)",
                          run([sys.executable, "-m", "pytest", "-q", "--maxfail=20"], left(0.95),
                              {"TINYMIXER_TEST_BACKEND": "cupy", **inside})))
    report(parts, args.out)
    print(f"report: {args.out / 'gpucheck.md'}")
    return 0 if all(p["status"] == "PASS" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
