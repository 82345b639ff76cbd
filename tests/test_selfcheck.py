"""``python -m tinymixer``: the description and the self-check, and that the check fails a broken model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.tools import selfcheck

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinymixer", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def test_python_m_tinymixer_describes_and_passes():
    done = run_module()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith(f"tinymixer {tm.__version__}\n")
    for expected in ["Python", "NumPy", "backend", "GPU (CuPy)", "BLAS", "threads", "TINYMIXER_BACKEND",
                     "TINYMIXER_THREADS", "TINYMIXER_DATA", "TINYMIXER_KEEP_FREED_MEMORY", "OPENBLAS_THREAD_TIMEOUT",
                     "KMP_BLOCKTIME"]:
        assert expected in out
    assert out.count("PASS") == 3 and "FAIL" not in out and "3 of 3 checks passed" in out
    assert done.stderr == ""


def test_no_check_only_describes():
    done = run_module("--no-check")
    assert done.returncode == 0
    assert "BLAS" in done.stdout and "PASS" not in done.stdout and "self-check" not in done.stdout


def test_help_names_the_program():
    done = run_module("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m tinymixer ")
    assert "(default: False)" in done.stdout


def test_a_backend_that_cannot_be_chosen_is_exit_code_1():
    done = run_module(TINYMIXER_BACKEND="abacus")
    assert done.returncode == 1
    assert "no backend: $TINYMIXER_BACKEND: unknown backend 'abacus'" in done.stdout and "Traceback" not in done.stderr


def test_a_wrong_thread_count_is_said_and_fails_the_checks():
    done = run_module(TINYMIXER_THREADS="abc")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "threads" in done.stdout and "cannot be chosen: TINYMIXER_THREADS='abc'" in done.stdout


def test_the_checks_pass_on_a_correct_model():
    results = selfcheck.run_checks()
    assert [r.passed for r in results] == [True, True, True], [r.line() for r in results]


@pytest.mark.parametrize("name, factor", [
    ("head/bias", 1.01),  # 3 of 667 parameters, 1% off: not lost among the others
    ("MixerBlock_1/channel_mixing/Dense_0/kernel", 0.99),
    ("MixerBlock_0/LayerNorm_0/scale", -1.0),
    ("images", 1.01),  # the gradient with respect to the input
])
def test_the_gradient_check_fails_a_broken_backward(name, factor):
    model = selfcheck.small_float64_mixer()
    correct_backward = model.backward

    def broken_backward(dlogits):
        dimages = correct_backward(dlogits)
        if name == "images":
            return dimages * factor
        model.grads[name] = model.grads[name] * factor
        return dimages

    model.backward = broken_backward
    result = selfcheck.gradient_check(model)
    assert not result.passed, result.line()
    assert result.line().endswith("FAIL") and "worst relative error" in result.value
    assert float(result.value.split()[3]) > 1e3 * selfcheck.GRADIENT_LIMIT  # far off, not borderline


def test_the_training_check_fails_a_non_finite_loss_and_says_why():
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16)
    model.params["head/bias"][0] = np.nan
    result = selfcheck.training_step_check(model)
    assert not result.passed and "loss nan" in result.value
    broken = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16)
    broken.backward = lambda dlogits: 1 / 0
    result = selfcheck.training_step_check(broken)
    assert not result.passed and result.value == "error: ZeroDivisionError: division by zero"


def test_a_failed_check_makes_exit_code_1(monkeypatch, capsys):
    failed = selfcheck.CheckResult("gradient check", "worst relative error 3.0e-2", passed=False)
    monkeypatch.setattr(selfcheck, "run_checks", lambda: [failed])
    assert selfcheck.main([]) == 1
    out = capsys.readouterr().out
    assert "gradient check: worst relative error 3.0e-2 (0.00 s)  FAIL" in out and "0 of 1 checks passed" in out


def test_the_training_check_reports_the_loss():
    result = selfcheck.training_step_check()
    assert result.passed and math.isclose(float(result.value.split()[1]), math.log(10), abs_tol=1e-4)  # zero head
