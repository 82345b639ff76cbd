"""The benchmark runs and compares like with like (its numbers are never asserted: timing is not a test)."""

from __future__ import annotations

import json
import os

import pytest

from tinymixer import BLAS_THREADS_SLEEP_AT_ONCE, bench


def test_measure_checks_pytorch_computes_the_same_network():
    pytest.importorskip("torch")
    result = bench.measure("micro/4", batch_size=8, image_size=16, repeats=1, use_torch=True)
    assert result["logits_max_abs_difference"] < 1e-4  # the same weights give the same logits
    for key in ["tinymixer_train_ms", "pytorch_train_ms", "tinymixer_infer_ms", "pytorch_infer_ms", "train_ratio"]:
        assert result[key] > 0


def test_command_line_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--configs", "micro/4", "--threads", "1", "--repeats", "1", "--batch-size", "8", "--image-size", "16",
            "--json", str(out)]
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "micro/4 | 1 |" in table and "float32 GEMM" in table
    runs = json.loads(out.read_text())
    assert runs[0]["results"][0]["config"] == "micro/4" and runs[0]["machine"]["threads"] == 1
    # the worker ran with the BLAS threads told to sleep (as `import tinymixer` set it here), and says so
    settings = {name: os.environ[name] for name in BLAS_THREADS_SLEEP_AT_ONCE}
    assert runs[0]["machine"]["blas_thread_sleep"] == settings
    assert all(f"{name}={value}" in table for name, value in settings.items())


def test_a_ratio_between_different_blas_libraries_is_flagged():
    machine = {"backend": "numpy", "torch_blas": "mkl", "blas_libraries": ["openblas"]}
    assert "different BLAS libraries" in bench._different_blas_note(machine)
    assert bench._different_blas_note(machine | {"blas_libraries": ["mkl"]}) is None  # like with like
    assert bench._different_blas_note(machine | {"backend": "cupy"}) is None  # the GPU: cuBLAS on both sides
    assert bench._different_blas_note(machine | {"torch_blas": None}) is None  # no PyTorch, nothing to compare
