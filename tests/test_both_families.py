"""Every program takes every checkpoint examples/cifar10.py writes, of either family (the Mixer and the CNN
baseline): predict.py, fewshot.py, cifar10.py --init (into a run of the same family; across families a one-line
error) and --evaluate, each with the run's checkpoint.npz and its best.npz."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cifar10_script import DIGITS_ARGS, ROOT, SCRIPT, cifar10, digits_folder, params_of

from tinymixer import to_host
from tinymixer.data import load_folder

QUICK = ["--limit-train", "128", "--limit-test", "60", "--epochs", "1"] + DIGITS_ARGS
FAMILIES = {"mixer": "MLP-Mixer of 4 blocks, patch 2 (16 tokens), C 64", "cnn": "CNN (ResNet) of widths 16/32/64"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict, fewshot = load("predict"), load("fewshot")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The digits, a one-epoch run of each family, and a digit saved as a picture."""
    root = tmp_path_factory.mktemp("families")
    digits = digits_folder(root / "digits")
    found = {"digits": digits}
    for family in FAMILIES:
        out = root / family
        assert cifar10.main(["--model", family, "--data-dir", str(digits), "--out", str(out)] + QUICK) == 0
        found[family] = out
    image = load_folder(digits / "cifar-10-batches-py").test_images[0, ..., 0]  # (8, 8) uint8
    Image.fromarray(image).save(root / "digit.png")
    found["image"] = root / "digit.png"
    return found


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kind", ["checkpoint.npz", "best.npz"])
@pytest.mark.slow
def test_predict_takes_both_families(runs, capsys, family, kind):
    checkpoint = runs[family] / kind
    assert predict.main([str(runs["image"]), "--checkpoint", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert f"{checkpoint}: {FAMILIES[family]}" in printed and "8x8 images, 10 classes" in printed
    assert sum(1 for line in printed.splitlines() if "%  " in line) == 5  # the default top-5
    assert predict.main([str(runs["image"]), "--checkpoint", str(checkpoint), "--top", "20"]) == 0
    printed = capsys.readouterr().out  # more than the classes: every class, said once
    assert "note: --top 20 is more than the model's 10 classes: top-10" in printed
    assert sum(1 for line in printed.splitlines() if "%  " in line) == 10


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fewshot_takes_both_families(runs, capsys, family):
    checkpoint = runs[family] / "best.npz"
    assert fewshot.main(["--checkpoint", str(checkpoint), "--data-dir", str(runs["digits"]), "--shots", "1", "5",
                         "--seeds", "2", "--limit-test", "100", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    width = 64
    assert f"({FAMILIES[family]}" in printed and f"features of {width} dimensions" in printed
    assert "few-shot accuracy on 100 test images, 10 classes" in printed
    row = next(line for line in printed.splitlines() if line.strip().startswith("5 "))
    assert float(row.split()[1]) > 10  # above chance with 5 images per class, for both families


@pytest.mark.parametrize("family", list(FAMILIES))
def test_evaluate_takes_both_families(runs, capsys, family):
    for kind in ("checkpoint.npz", "best.npz"):
        assert cifar10.main(["--evaluate", str(runs[family] / kind), "--out", str(runs[family] / "eval")]) == 0
        assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.slow
def test_init_fine_tunes_within_a_family_with_a_new_zero_head(runs, tmp_path, capsys, family):
    start = runs[family] / "best.npz"
    out = tmp_path / "tuned"
    assert cifar10.main(["--model", family, "--init", str(start), "--data-dir", str(runs["digits"]), "--out",
                         str(out), "--stop-after-epoch", "1", "--epochs", "2"] + QUICK[:4] + DIGITS_ARGS) == 0
    printed = capsys.readouterr().out
    assert (f"note: --init {start}: a new zero-initialised head for 10 classes (the checkpoint's has 10), as the "
            f"official fine-tuning does (--keep-head keeps a matching one)") in printed
    before, after = params_of(start), params_of(out / "checkpoint.npz")
    assert set(before) == set(after) and not np.array_equal(before["head/kernel"], after["head/kernel"])
    assert cifar10.main(["--resume", "--out", str(out)]) == 0  # --init is remembered, nothing is read again


@pytest.mark.parametrize("family", list(FAMILIES))
def test_keep_head_keeps_a_matching_head_and_says_so(runs, tmp_path, capsys, family, monkeypatch):
    start = runs[family] / "best.npz"
    heads = []
    real = cifar10.run_step

    def spy(model, *args, **kwargs):  # the head at the first step is the checkpoint's
        if not heads:
            heads.append(to_host(model.params["head/kernel"]).copy())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(cifar10, "run_step", spy)
    assert cifar10.main(["--model", family, "--init", str(start), "--keep-head", "--data-dir", str(runs["digits"]),
                         "--out", str(tmp_path / "kept")] + QUICK) == 0
    assert f"note: --init {start}: the checkpoint's head kept (10 classes) (--keep-head)" in capsys.readouterr().out
    assert np.array_equal(heads[0], params_of(start)["head/kernel"])


@pytest.mark.parametrize(("family", "other", "says"), [("mixer", "cnn", "it holds a CNN (ResNet), and this run "
                                                        "trains an MLP-Mixer"),
                                                       ("cnn", "mixer", "it holds an MLP-Mixer, and this run trains "
                                                        "a CNN (ResNet)")])
def test_init_across_families_is_a_one_line_error(runs, tmp_path, family, other, says):
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", family, "--init", str(runs[other] / "best.npz"),
                             "--data-dir", str(runs["digits"]), "--out", str(tmp_path / "x")] + QUICK,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert f"add --model {other}" in result.stderr


def test_keep_head_needs_init_and_matching_classes(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--keep-head", "--data-dir", str(runs["digits"]), "--out", str(tmp_path)] + QUICK)
    assert stop.value.code == 2 and "--keep-head keeps the head of --init's checkpoint" in capsys.readouterr().err


def test_piped_progress_bars_leave_no_residue(runs, tmp_path):
    """Progress bars are for terminals: with stderr piped (a log file), few-shot and image reading print none."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "fewshot.py"), "--checkpoint",
                             str(runs["cnn"] / "best.npz"), "--data-dir", str(runs["digits"]), "--shots", "1",
                             "--seeds", "1", "--limit-test", "50"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr and "features" not in result.stderr, result.stderr
    command = (f"from tinymixer.data.images import load_images; "
               f"print(load_images([{str(runs['image'])!r}] * 3, 8, channels=1, progress=True).shape)")
    result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "(3, 8, 8, 1)" in result.stdout, result.stderr
    assert "%|" not in result.stderr, result.stderr


@pytest.mark.slow
def test_evaluating_a_validation_run_on_the_test_set_says_nothing_misleading(runs, tmp_path, capsys):
    out = tmp_path / "val"
    assert cifar10.main(["--data-dir", str(runs["digits"]), "--validation", "100", "--out", str(out)] + QUICK) == 0
    capsys.readouterr()
    assert cifar10.main(["--evaluate", str(out / "best.npz"), "--validation", "0"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "note: --validation" not in printed, printed
    assert cifar10.main(["--evaluate", str(out / "best.npz"), "--validation", "100"]) == 0
    printed = capsys.readouterr().out  # the run's own split, asked for: said as what it is
    assert "validation accuracy" in printed and "note: --validation" not in printed, printed
