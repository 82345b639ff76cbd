"""Data-parallel training (tinymixer/training/distributed.py): the pieces in one process, then real runs of
`mpiexec -n 2`.

The multi-process tests need mpi4py and an `mpiexec` (the `test` extra brings both: mpi4py and the MPICH wheel).
Without them they are skipped, except under CI (``CI`` set), where a missing MPI is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cifar10_script import SCRIPT, cifar10, digits_folder

from tinymixer.training import distributed
from tinymixer.training.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def mpi_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return MPIEXEC is not None


needs_mpi = pytest.mark.skipif(not mpi_available() and not os.environ.get("CI"),
                               reason="needs mpi4py and mpiexec (pip install 'tinymixer[mpi]')")


def mpirun(n: int, *args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    assert mpi_available(), "mpi4py or mpiexec is missing: install the test extra (it brings mpi4py and mpich)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "TINYMIXER_THREADS"))}
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=clean | (env or {}), **kwargs)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


def weights_close(a: Path, b: Path, tol: float = 1e-12) -> float:
    """The largest difference between two checkpoints' weights, relative to the largest weight."""
    pa, pb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    scale = max(float(np.abs(v).max()) for v in pa.values())
    difference = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa) / scale
    print(f"relative difference {a.parent.name} vs {b.parent.name}: {difference:.1e}", file=sys.stderr)
    assert difference <= tol
    return difference


# --- in one process ---------------------------------------------------------------------------------------------


def test_without_a_launcher_nothing_changes_and_mpi4py_is_not_imported():
    code = ("import sys, tinymixer.training.distributed as d; c = d.init(); "
            "print(type(c).__name__, c.size, c.rank, 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "SLURM_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["SingleProcess", "1", "0", "False"], out.stderr


def test_a_launcher_without_mpi4py_is_refused(tmp_path):
    """N processes that each ran alone would write over each other's files: refuse, and say what to install."""
    (tmp_path / "mpi4py.py").write_text("raise ImportError('no mpi4py here')\n")
    code = "import tinymixer.training.distributed as d; d.run(lambda: 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PMI_SIZE="2", PMI_RANK="0", PYTHONPATH=str(tmp_path)))
    assert out.returncode == 1 and "started by an MPI launcher with 2 processes, but mpi4py" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("env", "size"), [({}, 1), ({"PMI_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),
                                           ({"SLURM_NTASKS": "8"}, 1), ({"SLURM_NTASKS": "8", "PMI_RANK": "2"}, 8)])
def test_launched_size_reads_the_launchers_variables(monkeypatch, env, size):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMI_RANK", "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_size() == size  # an sbatch allocation alone (SLURM_NTASKS, no task rank) is 1


@pytest.mark.parametrize(("batch", "ranks"), [(32, 2), (32, 3), (7, 7), (128, 5)])
def test_the_ranks_rows_tile_the_batch_in_order(batch, ranks):
    class Rank:
        size = ranks

        def __init__(self, rank):
            self.rank = rank

    rows = [distributed.shard_of(batch, Rank(r)) for r in range(ranks)]
    assert rows[0].start == 0 and rows[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(rows, rows[1:], strict=False))
    assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1


def test_augmenting_some_rows_equals_those_rows_of_the_whole_batch():
    from tinymixer.data.augment import apply_augmentation, augment, draw_augmentation

    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    whole = augment(images, np.random.default_rng(5), 2, True)
    draws = draw_augmentation(np.random.default_rng(5), 10, 2, True)
    for rows in (slice(0, 4), slice(4, 10), np.array([7, 1, 1])):
        np.testing.assert_array_equal(apply_augmentation(images[rows], draws, rows), whole[rows])


# --- real processes: mpiexec -n 2 --------------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.slow
def test_n_ranks_follow_the_one_process_run_and_stay_identical(ranks):
    """Six float64 steps (no clipping, so a gradient of the wrong size would show): the ranks' weights equal a
    one-process run's to float rounding, and are bit-identical on every rank after every step. (3 ranks split a
    batch of 24 unevenly: 8, 8, 8 is even; the script's digits runs below split 32 as 16/16 and 10/11/11.)"""
    result = mpirun(ranks, str(TESTS / "mpi_steps.py"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report, file=sys.stderr)
    assert report["ranks"] == ranks and report["bit_identical_across_ranks"]
    assert report["relative_difference"] < 1e-12


DIGITS = ["--epochs", "2", "--limit-train", "256", "--batch-size", "32", "--lr", "0.2", "--no-flip", "--dtype",
          "float64", "--no-progress", "--mixup", "0.4"]


@needs_mpi
@pytest.mark.slow
def test_the_script_on_two_processes_equals_one_and_only_rank_0_speaks(tmp_path, digits):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cifar10.main(["--data-dir", str(digits), "--out", str(one)] + DIGITS) == 0
    result = mpirun(2, str(SCRIPT), "--data-dir", str(digits), "--out", str(two), *DIGITS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch   1 ") == 1 and result.stdout.count("data: ") == 1  # rank 0 alone
    assert "MPI, 2 processes" in result.stdout and "16 images of each batch on each" in result.stdout
    weights_close(one / "checkpoint.npz", two / "checkpoint.npz")
    a, b = (json.loads((d / "metrics.json").read_text())["epochs"] for d in (one, two))
    assert [h["test_accuracy"] for h in a] == [h["test_accuracy"] for h in b]  # evaluation split over ranks
    assert np.allclose([h["train_loss"] for h in a], [h["train_loss"] for h in b], rtol=1e-12)


@needs_mpi
@pytest.mark.slow
def test_resume_across_sizes_both_ways(tmp_path, digits):
    """The training state does not depend on the number of processes: 2 -> 1 and 1 -> 2 end where 1 -> 1 does."""
    base = ["--data-dir", str(digits)] + DIGITS[:1] + ["3"] + DIGITS[2:]
    straight = tmp_path / "straight"
    assert cifar10.main(base + ["--out", str(straight)]) == 0
    two_then_one, one_then_two = tmp_path / "two_then_one", tmp_path / "one_then_two"
    first = mpirun(2, str(SCRIPT), *base, "--out", str(two_then_one), "--stop-after-epoch", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert cifar10.main(["--resume", "--out", str(two_then_one), "--no-progress"]) == 0
    assert cifar10.main(base + ["--out", str(one_then_two), "--stop-after-epoch", "1"]) == 0
    second = mpirun(2, str(SCRIPT), "--resume", "--out", str(one_then_two), "--no-progress")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "ran as 1 process(es)" in second.stdout and "now as 2" in second.stdout
    for resumed in (two_then_one, one_then_two):
        weights_close(straight / "checkpoint.npz", resumed / "checkpoint.npz")


@needs_mpi
def test_a_rank_that_fails_ends_the_job_and_the_checkpoint_survives(tmp_path, digits):
    out = tmp_path / "run"
    start = time.monotonic()
    result = mpirun(2, str(TESTS / "mpi_fault.py"), "--data-dir", str(digits), "--out", str(out), *DIGITS,
                    env={"FAULT_AT_STEP": "12"}, timeout=120)  # epoch 1 is steps 1-8: its checkpoint exists
    seconds = time.monotonic() - start
    print(f"job ended {seconds:.1f} s after it started", file=sys.stderr)
    assert result.returncode != 0 and "rank 1 of 2 failed; ending the job" in result.stderr
    assert "a fault injected on rank 1" in result.stderr and seconds < 60
    params, _, meta = load_checkpoint(out / "checkpoint.npz")  # the last checkpoint is whole
    assert meta["state"]["epoch"] == 1 and "stem/kernel" in params


@needs_mpi
@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_the_same_step_and_saves(tmp_path, digits):
    out = tmp_path / "run"
    args = ["--data-dir", str(digits), "--out", str(out), "--epochs", "30", "--batch-size", "32", "--no-progress",
            "--log-every", "1"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "TINYMIXER_THREADS"))}
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=clean | {"PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # to mpiexec, which passes it on to every rank
    output, _ = proc.communicate(timeout=120)
    assert "interrupted: saved" in output, output
    assert output.count("interrupted: saved") == 1  # rank 0 says it, once
    meta = load_checkpoint(out / "checkpoint.npz")[2]
    assert 0 < meta["state"]["global_step"] < 30 * (1437 // 32) and meta["state"]["step_in_epoch"] > 0
    assert proc.returncode == 130, output


# --- the benchmark and its cost model ----------------------------------------------------------------------------


def test_ring_allreduce_cost_model_by_hand():
    from tinymixer.tools.bench_parallel import ring_allreduce_seconds, scaling_efficiency

    assert ring_allreduce_seconds(1e9, 1, 1e9) == 0.0
    assert ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)  # 2 (2 - 1) / 2 x 1 GB at 1 GB/s
    assert ring_allreduce_seconds(1e9, 4, 1e9, latency=1e-3) == pytest.approx(1.5 + 0.006)
    # 8 images per process at 1 ms each: 8 ms of compute against 8 ms of all-reduce: half the ideal speed-up
    assert scaling_efficiency(1e-3, 64, 8, nbytes=8e6 * 4 / 7, bandwidth=1e9) == pytest.approx(0.5)


@needs_mpi
def test_parallel_benchmark_runs_every_layout():
    result = subprocess.run([sys.executable, "-m", "tinymixer.tools.bench_parallel", "--config", "micro/4", "--steps",
                             "1", "--batch-size", "32"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    from tinymixer.tools.bench_parallel import cores

    assert "| 1 x 1 |" in result.stdout and "N = 512" in result.stdout
    assert cores() == 1 or f"| {cores()} x 1 |" in result.stdout  # P processes of one thread, through mpiexec


def test_the_mpi_library_version_is_one_tidy_line():
    from tinymixer.training.distributed import library_version

    assert library_version("MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\n") == "MPICH 5.0.2"
    assert library_version("Open MPI v4.1.5, package: Open MPI x, ident: 4.1.5\n") == \
        "Open MPI v4.1.5, package: Open MPI x, ident: 4.1.5"
    assert library_version("") == "unknown version"


def test_a_failing_rank_says_why_then_aborts_the_job(monkeypatch, capsys):
    """distributed.run on a rank of two: the error and its traceback are written (and flushed) before the job is
    aborted, and a communicator whose abort returns still ends this rank with code 1."""
    from tinymixer.training import distributed as dist

    calls = []

    class TwoRanks:
        size, rank = 2, 1

        def abort(self, code: int = 1) -> None:
            calls.append(("abort", code, capsys.readouterr().err))  # what was written before the abort

    monkeypatch.setattr(dist, "init", lambda: TwoRanks())
    monkeypatch.setattr(dist, "ABORT_GRACE_SECONDS", 0.0)

    def main():
        raise RuntimeError("a fault of this rank")

    with pytest.raises(SystemExit) as stop:
        dist.run(main)
    assert stop.value.code == 1 and len(calls) == 1 and calls[0][1] == 1
    assert "rank 1 of 2 failed; ending the job" in calls[0][2] and "RuntimeError: a fault of this rank" in calls[0][2]
