"""examples/cifar10.py end to end: on CIFAR-format data made here, on real handwritten digits, and its promises
(exact resume, Ctrl-C, NaN stop, corrupted checkpoints). No network: data is made locally or served from 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cifar_archive
from test_data import served  # noqa: F401 - the fixture

from tinymixer.data import Dataset, save_folder
from tinymixer.training.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "cifar10.py"
spec = importlib.util.spec_from_file_location("cifar10_script", SCRIPT)
cifar10 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cifar10)

# The README's digits command ("Train on your own data"): a micro Mixer learns the 8x8 digits in ~15 s on 2 cores.
DIGITS_ARGS = ["--batch-size", "32", "--lr", "0.2", "--crop-padding", "0", "--no-flip", "--no-progress"]


def digits_folder(root: Path, shuffle_labels: bool = False) -> Path:
    """scikit-learn's bundled 8x8 handwritten digits (1797 real scans, 0..16 grey levels) as a CIFAR-format folder
    of 1-channel 8x8 images; 360 images held out as the test batch."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    train_labels = labels[train]
    if shuffle_labels:  # the same images with the labels scattered: nothing to learn that generalises
        train_labels = np.random.default_rng(1).permutation(train_labels)
    save_folder(root / "cifar-10-batches-py", Dataset(images[train], train_labels, images[test], labels[test],
                                                      [str(d) for d in range(10)]))
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


def params_of(checkpoint: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(checkpoint)[0]


def test_help():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--resume" in result.stdout and "--limit-train" in result.stdout


@pytest.mark.slow
def test_quick_run_downloads_verifies_and_trains(tmp_path, served):  # noqa: F811
    www, url = served
    archive, md5 = make_cifar_archive(www)
    out = tmp_path / "run"
    code = cifar10.main(["--data-dir", str(tmp_path / "data"), "--download", "--data-url", f"{url}/{archive.name}",
                         "--data-md5", md5, "--limit-train", "512", "--epochs", "1", "--out", str(out),
                         "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    epoch = metrics["epochs"][0]
    for key in ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "wall_time", "images_per_sec"]:
        assert np.isfinite(epoch[key]), key
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    params = params_of(out / "checkpoint.npz")
    assert params["stem/kernel"].shape == (4, 4, 3, 64) and "MixerBlock_3/LayerNorm_1/scale" in params


@pytest.mark.slow
def test_digits_reach_95_percent(tmp_path, digits, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "15", "--out", str(out)] + DIGITS_ARGS) == 0
    accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    print(f"digits test accuracy: {100 * accuracy:.2f}%", file=sys.stderr)
    assert accuracy >= 0.95
    evaluated = cifar10.main(["--evaluate", str(out / "checkpoint.npz"), "--out", str(tmp_path / "eval")])
    assert evaluated == 0 and f"test accuracy {100 * accuracy:.2f}%" in capsys.readouterr().out  # data remembered
    assert (tmp_path / "eval" / "confusion_matrix_test.png").exists()


@pytest.mark.slow
def test_shuffled_labels_do_not_generalise(tmp_path):
    data = digits_folder(tmp_path / "data", shuffle_labels=True)
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(data), "--epochs", "15", "--out", str(out)] + DIGITS_ARGS) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] < 0.5  # chance is 10%: the 95% above is learned from the images


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path, digits):
    base = ["--data-dir", str(digits), "--limit-train", "256"] + DIGITS_ARGS
    assert cifar10.main(base + ["--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert cifar10.main(base + ["--epochs", "3", "--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert len(json.loads((tmp_path / "split/metrics.json").read_text())["epochs"]) == 1
    assert cifar10.main(base + ["--epochs", "3", "--out", str(tmp_path / "split"), "--resume"]) == 0
    straight, split = params_of(tmp_path / "straight/checkpoint.npz"), params_of(tmp_path / "split/checkpoint.npz")
    assert all(np.array_equal(straight[k], split[k]) for k in straight)
    history = json.loads((tmp_path / "split/metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path, digits):
    base = [sys.executable, str(SCRIPT), "--data-dir", str(digits)] + DIGITS_ARGS + ["--epochs", "8"]
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(base + ["--out", str(out), "--log-every", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted: saved" in output
    meta = load_checkpoint(out / "checkpoint.npz")[2]
    assert 0 < meta["state"]["global_step"] < 8 * (1437 // 32)
    resumed = subprocess.run(base + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert cifar10.main(["--data-dir", str(digits)] + DIGITS_ARGS + ["--epochs", "8", "--out",
                                                                     str(tmp_path / "straight")]) == 0
    a, b = params_of(out / "checkpoint.npz"), params_of(tmp_path / "straight/checkpoint.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to the NaN is the point
@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, capsys):
    base = ["--data-dir", str(digits), "--limit-train", "256", "--out", str(tmp_path)] + DIGITS_ARGS
    assert cifar10.main(base + ["--epochs", "1"]) == 0
    good = (tmp_path / "checkpoint.npz").read_bytes()
    code = cifar10.main(base + ["--epochs", "3", "--resume", "--lr", "1e30", "--clip", "0", "--log-every", "1"])
    assert code == 3
    assert "the loss became" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.npz").read_bytes() == good


@pytest.mark.slow
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, digits):
    base = ["--data-dir", str(digits), "--limit-train", "64", "--out", str(tmp_path)] + DIGITS_ARGS
    assert cifar10.main(base + ["--epochs", "1"]) == 0
    checkpoint = tmp_path / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # a torn write
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        cifar10.main(base + ["--epochs", "2", "--resume"])
    result = subprocess.run([sys.executable, str(SCRIPT), "--resume"] + base + ["--epochs", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "error: checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_resume_with_other_model_options_is_refused(tmp_path, digits, capsys):
    base = ["--data-dir", str(digits), "--limit-train", "64", "--out", str(tmp_path)] + DIGITS_ARGS
    assert cifar10.main(base + ["--epochs", "1"]) == 0
    with pytest.raises(SystemExit) as stop:
        cifar10.main(base + ["--epochs", "2", "--resume", "--config", "tiny/4"])
    assert stop.value.code == 2 and "trained with --config micro/4; --config tiny/4 cannot change it" in \
        capsys.readouterr().err


@pytest.mark.host  # shards are the CPU's threads (on a GPU a batch is one shard)
@pytest.mark.slow
def test_resume_on_another_number_of_threads_says_so(tmp_path, digits, capsys, monkeypatch):
    # the batch's shards follow the thread count; resuming with another count changes the last bits, and says so
    base = ["--data-dir", str(digits), "--limit-train", "64", "--out", str(tmp_path)] + DIGITS_ARGS
    monkeypatch.setenv("TINYMIXER_THREADS", "2")
    assert cifar10.main(base + ["--epochs", "1"]) == 0
    assert "batch in 2 shard(s)" in capsys.readouterr().out
    monkeypatch.setenv("TINYMIXER_THREADS", "1")
    assert cifar10.main(base + ["--epochs", "2", "--resume"]) == 0
    assert "ran as 1 process(es) with the batch in 2 shard(s) each, and now as 1 with 1" in capsys.readouterr().out


@pytest.mark.slow
def test_cnn_trains_resumes_exactly_and_evaluates(tmp_path, digits, capsys):
    """--model cnn goes through the same loop, checkpoints and resume as the Mixer: a run cut after one epoch and
    resumed equals the straight run bit for bit, and --evaluate rebuilds the CNN from its checkpoint."""
    base = ["--model", "cnn", "--data-dir", str(digits), "--limit-train", "256"] + DIGITS_ARGS
    assert cifar10.main(base + ["--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert "CNN (ResNet) cnn-micro: 174,778 parameters, widths 16/32/64" in capsys.readouterr().out
    assert cifar10.main(base + ["--epochs", "3", "--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert cifar10.main(["--resume", "--out", str(tmp_path / "split")]) == 0  # the options come from the checkpoint
    straight, split = params_of(tmp_path / "straight/checkpoint.npz"), params_of(tmp_path / "split/checkpoint.npz")
    assert "stage0/block0/conv1/kernel" in straight and all(np.array_equal(straight[k], split[k]) for k in straight)
    accuracy = json.loads((tmp_path / "straight/metrics.json").read_text())["test_accuracy"]
    capsys.readouterr()
    assert cifar10.main(["--evaluate", str(tmp_path / "straight/checkpoint.npz")]) == 0
    assert f"test accuracy {100 * accuracy:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--model", "cnn", "--config", "tiny/4"], "--config tiny/4 is not a cnn size; --model cnn takes cnn-micro"),
    (["--config", "cnn-tiny"], "--config cnn-tiny is not a mixer size"),
    (["--model", "cnn", "--patch-size", "2"], "--patch-size 2: the CNN has no patches"),
    (["--model", "cnn", "--stochastic-depth", "0.1"], "--stochastic-depth 0.1: the CNN has no patches"),
])
def test_model_options_that_do_not_fit_are_refused(tmp_path, digits, capsys, options, message):
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--data-dir", str(digits), "--out", str(tmp_path)] + options)
    assert stop.value.code == 2 and message in capsys.readouterr().err
