"""The GPU path end to end, and its budgets: on a real GPU, or (``pytest --cupy-standin``) on the strict stand-in,
which also counts what a training step asks of the device.

- a training step makes no host sync, at most 2 host -> device copies (images, labels; the masks are computed on
  the device),
  and a bounded number of array calls and kernel launches (SGD and AdamW, dropout and stochastic depth on);
- examples/cifar10.py --backend cupy trains, stops, resumes bit for bit, evaluates; predict.py and fewshot.py run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_both_families import fewshot, predict
from test_cifar10_script import DIGITS_ARGS, cifar10, digits_folder, params_of

import tinymixer as tm
from tinymixer import backend

cupy, WHY_NOT = backend._load_cupy()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cupy is None, reason=f"needs a GPU: {WHY_NOT}")]
standin_only = pytest.mark.skipif(not hasattr(cupy, "standin"), reason="counts come from the stand-in")

# Measured on the stand-in (tiny/4, batch 128, dropout 0.1, stochastic depth 0.1, clipping on, a step after the
# first): SGD 823 calls / 547 launches, AdamW 846 / 568, with the masks computed on the device, the tanh GELU,
# LayerNorm's elementwise steps, dropout and stochastic depth in fused kernels, the residual sums folded into
# stochastic depth's kernel and LayerNorm's backward, and the GEMVs' constant vectors made once. Before: 3,035
# calls and 32 copies (SGD), 3,996 calls (AdamW); whole-buffer optimisers and host masks in one copy: 2,054 / 1,253
# and 3 copies; masks on the device: 2,026 / 1,283 and 2 copies; fused GELU: 1,691 / 1,011; fused LayerNorm:
# 1,367 / 755; constants once: 1,283 / 670; fused dropout and the depth factor: 1,124 / 607; residuals folded:
# 1,095 / 562; the gradients gathered by one concatenate(axis=None), LayerNorm's xhat and out from one kernel, its
# backward on the N-d arrays: 926 / 545; the masks' bits computed inside the dropout and stochastic-depth kernels (no
# mask kernels, no masks in memory): 852 / 515; GELU's backward one multiply, LayerNorm's device path without its
# 2-D and column views (a (C, 1) weight, reductions over the leading axes): 719 / 515; token mixing's dw and db as
# reductions: 639 / 499 -- but then the stand-in learnt to count what CuPy's matmul launches besides its GEMM (a
# copy of each non-contiguous operand above 2-D, three pointer-array kernels when it broadcasts a matrix over a
# stack), and the same step was 639 / 831; LayerNorm's products on 2-D views and token mixing's weights as explicit
# stacks: 823 / 547 (views are cheap host calls, launches are kernels). The aim: 600 (SGD), 800 (AdamW)
# calls; of the calls left, 276 are views and allocations (no kernel).
BUDGETS = {"sgd": {"calls": 835, "launches": 555}, "adamw": {"calls": 860, "launches": 575}}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


@standin_only
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.slow
def test_a_training_step_stays_within_its_budget(optimizer):
    from tinymixer.training.train import train_step

    tm.set_backend("cupy")
    model = tm.MlpMixer.from_name("tiny/4", num_classes=10, image_size=32, dropout=0.1, stochastic_depth=0.1)
    opt = tm.SGD(momentum=0.9) if optimizer == "sgd" else tm.AdamW(weight_decay=0.1,
                                                                  decay_mask=tm.decay_mask(model.params))
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(-1, 1, (128, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 128)
    counts = cupy.standin.COUNTS
    for step in range(2):  # the first step allocates the gradients and the optimiser's state
        counts.reset()
        loss, logits = train_step(model, opt, images, labels, 0.01, 1.0, masks=model.draw_masks([0, step], 128))
    measured = counts.snapshot()
    print(f"{optimizer}: {measured}")
    assert measured["syncs"] == 0, dict(counts.syncs)  # nothing waits for the GPU
    assert measured["to_host"] == 0 and measured["to_device"] <= 2, dict(counts.to_device)
    for key, budget in BUDGETS[optimizer].items():
        assert measured[key] <= budget, (key, measured, counts.launches.most_common(10))
    assert isinstance(loss, cupy.ndarray) and isinstance(logits, cupy.ndarray)  # results stay on the device


@pytest.mark.slow
def test_cifar10_on_the_device_trains_resumes_exactly_and_evaluates(tmp_path, digits, capsys):
    base = ["--data-dir", str(digits), "--backend", "cupy", "--limit-train", "256", "--limit-test", "100",
            "--epochs", "2", "--dropout", "0.1", "--optimizer", "adamw", "--lr", "0.003", "--ema", "0.9"]
    base += DIGITS_ARGS
    assert cifar10.main(base + ["--out", str(tmp_path / "straight")]) == 0
    assert "backend cupy" in capsys.readouterr().out
    assert cifar10.main(base + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert cifar10.main(["--resume", "--out", str(tmp_path / "split"), "--backend", "cupy"]) == 0
    a, b = params_of(tmp_path / "straight/checkpoint.npz"), params_of(tmp_path / "split/checkpoint.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # bit for bit, through a checkpoint of device arrays
    capsys.readouterr()
    assert cifar10.main(["--evaluate", str(tmp_path / "straight/best.npz"), "--backend", "cupy", "--limit-test",
                         "100"]) == 0
    accuracy = json.loads((tmp_path / "straight/metrics.json").read_text())["best"]["accuracy"]
    assert f"test accuracy {100 * accuracy:.2f}%" in capsys.readouterr().out


@pytest.mark.slow
def test_the_device_run_computes_what_the_host_run_computes(tmp_path, digits):
    """The same run on NumPy and on CuPy (float64): the same weights to rounding (a GPU, and the host's two
    shards against the device's one, add in other orders)."""
    base = ["--data-dir", str(digits), "--limit-train", "128", "--limit-test", "50", "--epochs", "1",
            "--dtype", "float64"] + DIGITS_ARGS
    assert cifar10.main(base + ["--out", str(tmp_path / "host"), "--backend", "numpy"]) == 0
    assert cifar10.main(base + ["--out", str(tmp_path / "device"), "--backend", "cupy"]) == 0
    host, device = params_of(tmp_path / "host/checkpoint.npz"), params_of(tmp_path / "device/checkpoint.npz")
    assert max(float(np.abs(host[k] - device[k]).max()) for k in host) < 1e-9


def test_predict_and_fewshot_on_the_device(tmp_path, digits, capsys):
    from PIL import Image

    from tinymixer.data import load_folder

    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--limit-train", "128", "--epochs", "1", "--out", str(out)]
                        + DIGITS_ARGS) == 0
    Image.fromarray(load_folder(digits / "cifar-10-batches-py").test_images[0, ..., 0]).save(tmp_path / "d.png")
    capsys.readouterr()
    assert predict.main([str(tmp_path / "d.png"), "--checkpoint", str(out / "best.npz"), "--backend", "cupy"]) == 0
    assert sum(1 for line in capsys.readouterr().out.splitlines() if "%  " in line) == 5
    assert fewshot.main(["--checkpoint", str(out / "best.npz"), "--data-dir", str(digits), "--shots", "1",
                         "--seeds", "1", "--limit-test", "50", "--no-progress", "--backend", "cupy"]) == 0
    assert "few-shot accuracy on 50 test images" in capsys.readouterr().out


@pytest.mark.skipif(bool(__import__("os").environ.get("TINYMIXER_IN_GPUCHECK")), reason="run by the GPU check")
@pytest.mark.slow
def test_the_prepared_gpu_check_runs_and_reports(tmp_path):
    """python -m tinymixer.tools.gpucheck --quick: every part PASS on this device (on the stand-in: the plumbing,
    not CUDA), and its report written. Of the GPU tests it runs only the layer parity (this suite runs them all)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tinymixer.tools.gpucheck", "--quick", "--out", str(tmp_path),
                             "--tests", "parity"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = json.loads((tmp_path / "gpucheck.json").read_text())
    report = (tmp_path / "gpucheck.md").read_text()
    assert [p["status"] for p in parts] == ["PASS"] * 6 and "## Timings" in report and "## Benchmark" in report


def test_the_gpu_check_refuses_a_file_for_out_and_a_budget_of_nothing(tmp_path, capsys):
    from tinymixer.tools import gpucheck

    a_file = tmp_path / "report.png"
    a_file.write_bytes(b"x")
    for wrong, says in ((["--out", str(a_file)], "is a file: give a folder"), (["--budget", "0"], "--budget"),
                        (["--budget", "-5"], "--budget")):
        with pytest.raises(SystemExit) as stop:
            gpucheck.main(wrong)
        assert stop.value.code == 2 and says in capsys.readouterr().err
    assert a_file.read_bytes() == b"x"  # nothing written


@pytest.mark.slow
def test_the_benchmark_runs_on_the_device(tmp_path, capsys):
    """tools.bench --backend cupy: timed with synchronisation, device memory reported (and on the stand-in, the
    array calls of a step); PyTorch on CUDA beside it where it has a GPU."""
    from tinymixer.tools import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--backend", "cupy", "--configs", "micro/4", "--repeats", "1", "--batch-size", "16",
                       "--image-size", "16", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())[0]["results"]
    assert result["tinymixer_train_ms"] > 0 and "tinymixer_gpu_pool_mb" in result
    if hasattr(cupy, "standin"):
        assert 0 < result["kernel_launches_per_step"] <= result["array_calls_per_step"]
        assert "array calls and" in capsys.readouterr().out


@standin_only
def test_fit_reads_the_device_once_per_epoch_not_per_step():
    from tinymixer.training.train import fit

    tm.set_backend("cupy")
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (256, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 256)
    cupy.standin.COUNTS.reset()
    history = fit(model, images, labels, epochs=2, batch_size=32)  # 8 steps an epoch
    assert cupy.standin.COUNTS.snapshot()["syncs"] == 2 * 2  # the loss and the accuracy, at each epoch's end
    assert len(history) == 2 and 0 <= history[-1]["train_accuracy"] <= 1
