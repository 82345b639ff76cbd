"""The benchmark runs and compares like with like (its numbers are never asserted: timing is not a test)."""

from __future__ import annotations

import json

import pytest

from tinymixer.tools import bench
from tinymixer.util.host import BLAS_THREADS_SLEEP_AT_ONCE, tuned_environment


@pytest.mark.slow
def test_measure_checks_pytorch_computes_the_same_network():
    pytest.importorskip("torch")
    result = bench.measure("micro/4", batch_size=8, image_size=16, repeats=1, use_torch=True)
    assert result["logits_max_abs_difference"] < 1e-4  # the same weights give the same logits
    for key in ["tinymixer_train_ms", "pytorch_train_ms", "tinymixer_infer_ms", "pytorch_infer_ms", "train_ratio",
                "gemm_alone_ms", "gemm_floor_ratio", "fused_step_ms", "fused_floor_ratio"]:
        assert result[key] > 0
    assert 0 < result["gemm_share"] < result["fused_share"] < 1  # parts of the step: the GEMMs, then with passes


@pytest.mark.slow
def test_command_line_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--configs", "micro/4", "--threads", "1", "--repeats", "1", "--batch-size", "8", "--image-size", "16",
            "--json", str(out)]
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "micro/4 | 1 |" in table and "float32 GEMM" in table
    runs = json.loads(out.read_text())
    assert runs[0]["results"][0]["config"] == "micro/4" and runs[0]["machine"]["threads"] == 1
    # the worker ran with the BLAS threads told to sleep (as tm.tune_host() sets it up in a program), and says so
    settings = {name: tuned_environment()[name] for name in BLAS_THREADS_SLEEP_AT_ONCE}
    assert runs[0]["machine"]["blas_thread_sleep"] == settings
    assert all(f"{name}={value}" in table for name, value in settings.items())


@pytest.mark.slow
def test_the_cnn_is_timed_against_the_same_resnet_in_pytorch(tmp_path, capsys):
    pytest.importorskip("torch")
    result = bench.measure("cnn-micro", batch_size=8, image_size=16, repeats=1, use_torch=True)
    assert result["logits_max_abs_difference"] < 1e-4  # the same ResNet, the same weights, the same logits
    for key in ["tinymixer_train_ms", "pytorch_train_ms", "tinymixer_infer_ms", "pytorch_infer_ms", "train_ratio",
                "infer_ratio", "tinymixer_train_gflops"]:
        assert result[key] > 0
    out = tmp_path / "bench.json"  # and through the command line: a CNN takes an image size no patch divides
    assert bench.main(["--configs", "cnn-micro", "--threads", "1", "--repeats", "1", "--batch-size", "8",
                       "--image-size", "18", "--json", str(out)]) == 0
    assert "cnn-micro | 1 |" in capsys.readouterr().out
    (r,) = json.loads(out.read_text())[0]["results"]
    assert r["config"] == "cnn-micro" and r["train_ratio"] > 0 and r["infer_ratio"] > 0
    assert r["tinymixer_train_peak_mb"] > 0 and r["pytorch_train_peak_mb"] > 0


def test_a_ratio_between_different_blas_libraries_is_flagged():
    machine = {"backend": "numpy", "torch_blas": "mkl", "blas_libraries": ["openblas"]}
    assert "different BLAS libraries" in bench._different_blas_note(machine)
    assert bench._different_blas_note(machine | {"blas_libraries": ["mkl"]}) is None  # like with like
    assert bench._different_blas_note(machine | {"backend": "cupy"}) is None  # the GPU: cuBLAS on both sides
    assert bench._different_blas_note(machine | {"torch_blas": None}) is None  # no PyTorch, nothing to compare


# -- stability: pure functions on made-up timings (nothing is timed here) -----------------------------------------

STEADY = [100.0, 101.0, 99.0, 102.0, 100.0, 98.0, 101.0]  # ms: a quiet machine, 4% from fastest to slowest


def fake_run(threads, gemm, **samples):
    """One worker's output as ``bench.worker`` returns it, with the given samples (ms) for micro/4."""
    samples = {q: samples.get(q, STEADY) for q in bench.TIMED}
    result = {"config": "micro/4", "threads": threads, "samples_ms": samples, "fraction_of_gemm_peak": 0.5,
              "tinymixer_train_gflops": 50.0, "gemm_floor_ratio": 0.6, "fused_floor_ratio": 0.8}
    result |= {f"{q}_ms": sorted(v)[len(v) // 2] for q, v in samples.items()}
    result |= {f"{k}_ratio": result[f"tinymixer_{k}_ms"] / result[f"pytorch_{k}_ms"] for k in ("train", "infer")}
    machine = {"threads": threads, "gemm_gflops_samples": gemm, "gemm_gflops": max(gemm)}
    return {"machine": machine, "results": [result]}


def test_relative_spread():
    assert bench.relative_spread(STEADY) < bench.SPREAD_LIMIT
    assert bench.relative_spread(STEADY[:-1] + [250.0]) > bench.SPREAD_LIMIT  # one wild repeat
    assert bench.relative_spread([100.0]) is None  # one repeat: nothing to judge
    assert bench.relative_spread([100.0, 100.0]) == 0


def test_gemm_scaling_is_a_fraction_of_linear():
    assert bench.gemm_scaling({1: 150.0, 2: 300.0}) == {2: 1.0}
    assert bench.gemm_scaling({1: 150.0, 2: 285.0, 4: 450.0}) == pytest.approx({2: 0.95, 4: 0.75})
    assert bench.gemm_scaling({1: 78.0, 2: 59.0})[2] < 0.5  # 2 threads slower than 1
    assert bench.gemm_scaling({2: 300.0}) == {}


def test_steady_timings_pass():
    runs = [fake_run(1, [150, 152, 149, 151, 150]), fake_run(2, [298, 301, 296, 300, 299])]
    assert bench.assess_stability(runs) == []
    assert all(r["stability"]["stable"] for run in runs for r in run["results"])
    table = bench._format_table(runs)
    assert "!" not in table and "unstable" not in table and "1.00" in table
    assert table.splitlines()[-1].split(" | ")[5:7] == ["0.60", "0.80"]  # the floors: GEMMs alone, and with the
    # elementwise layers one pass each, over PyTorch's step


def test_one_wild_repeat_voids_its_ratio_only():
    runs = [fake_run(1, [150, 152, 149, 151, 150], pytorch_train=STEADY[:-1] + [250.0])]
    notes = bench.assess_stability(runs)
    stability = runs[0]["results"][0]["stability"]
    assert not stability["stable"] and list(stability["unstable"]) == ["pytorch_train"]
    assert stability["spreads"]["pytorch_train"] == pytest.approx(1.52)
    assert len(notes) == 1 and "PyTorch train step" in notes[0] and "152%" in notes[0] and "limit 20%" in notes[0]
    row = bench._format_table(runs).splitlines()[-1].split(" | ")
    assert row[3] == "100!" and row[4] == "unstable"  # the PyTorch train time is marked, its ratio withheld
    assert row[5] == row[6] == "unstable"  # and the floors, which rest on it too
    assert row[9] == "1.00"  # inference was steady: its ratio stands
    json.dumps(runs)  # the verdicts go into --json as they are


def test_a_gemm_probe_slower_on_two_threads_than_on_one_voids_those_ratios():
    runs = [fake_run(1, [78, 77, 72, 75, 72]), fake_run(2, [55, 59, 44, 51, 43])]  # measured on a shared machine
    notes = bench.assess_stability(runs)
    assert runs[0]["results"][0]["stability"]["stable"]
    unstable = runs[1]["results"][0]["stability"]["unstable"]
    assert set(unstable) == {"gemm_scaling", "gemm_spread"}
    assert runs[1]["machine"]["gemm_scaling"] == pytest.approx(59 / 78 / 2)
    assert any("0.38 of linear" in note and "GEMM 59 GFLOP/s against 78 on 1" in note for note in notes)
    one, two = (line.split(" | ") for line in bench._format_table(runs).splitlines()[-2:])
    assert one[4] == "1.00" and one[9] == "1.00"
    assert two[1] == "2!" and two[4] == two[9] == "unstable" and two[12].endswith("!")


def test_a_step_much_slower_on_more_threads_is_flagged():
    # the reported case: PyTorch's step 105 ms on 1 thread, 1569 ms on 2 (steady repeats, a GEMM probe that scaled)
    runs = [fake_run(1, [150.0] * 5, pytorch_train=[105.0] * 7),
            fake_run(2, [300.0] * 5, pytorch_train=[1569.0, 1570.0, 1568.0, 1569.0, 1571.0, 1567.0, 1569.0])]
    notes = bench.assess_stability(runs)
    assert list(runs[1]["results"][0]["stability"]["unstable"]) == ["pytorch_train"]
    assert notes == ["micro/4, 2 threads, PyTorch train step: 1569 ms, 14.94x its 105 ms on 1 (limit 1.5x): more "
                     "threads were slower, so they competed with other work"]


# -- the command line ---------------------------------------------------------------------------------------------

def test_help_shows_the_program_and_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no line breaks inside the defaults
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m tinymixer.tools.bench ")
    for default in ["(default: ['tiny/4', 'small/4'])", "(default: 128)", "(default: 32)", "(default: [1, 2])",
                    "(default: 7)", "(default: numpy)"]:
        assert default in " ".join(text.split())  # (a default may wrap onto the next line)
    # every option's default but the empty ones (off flags, None), as every program's --help (util.cli)
    assert text.count("(default:") == 6 and "(default: False)" not in text and "(default: None)" not in text


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--repeats", "x"], "argument --repeats: 'x' is not an integer"),
    (["--configs", "tiny/5"], "argument --configs: invalid choice: 'tiny/5'"),
    (["--image-size", "30"], "--image-size 30 is not a multiple of tiny/4's patch size 4"),
    (["--configs", "cnn-tiny", "B/16", "--image-size", "24"], "--image-size 24 is not a multiple of B/16's patch"),
    (["--configs", "cnn-huge"], "argument --configs: invalid choice: 'cnn-huge'"),
])
def test_a_bad_option_is_one_line_and_exit_code_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"python -m tinymixer.tools.bench: error: {message}")
    assert captured.err.count("\n") == 1


def test_a_bad_option_from_the_shell_has_no_traceback():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tinymixer.tools.bench", "--threads", "0"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
