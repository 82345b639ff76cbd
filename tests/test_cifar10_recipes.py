"""examples/cifar10.py with the training recipes' ingredients: Adam/AdamW, linear decay, weight averaging,
(and the regularisers and augmentations as they land); every one resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cifar10_script import cifar10, digits_folder

from tinymixer.trainer import options
from tinymixer.training.checkpoint import load_checkpoint

QUICK = ["--limit-train", "256", "--limit-test", "100", "--no-progress", "--batch-size", "32"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


def straight_and_resumed(tmp_path: Path, digits: Path, options: list[str]) -> tuple[dict, dict, dict, dict]:
    base = ["--data-dir", str(digits), "--epochs", "2"] + options + QUICK
    assert cifar10.main(base + ["--out", str(tmp_path / "straight")]) == 0
    assert cifar10.main(base + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert cifar10.main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.npz") for run in ("straight", "split"))
    return a[0], b[0], a[1], b[1]


@pytest.mark.parametrize("options", [
    ["--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.05", "--schedule", "linear", "--end-lr", "1e-5"],
    ["--optimizer", "adam", "--lr", "0.003", "--weight-decay", "1e-4", "--mixup", "0.4", "--ema", "0.9"],
    ["--optimizer", "adamw", "--lr", "0.003", "--randaugment", "2,15", "--cutmix", "1.0", "--random-erasing", "0.5"],
    ["--recipe", "pretrain", "--dropout", "0.1", "--accumulate", "2"],  # + stochastic depth, RandAugment, mixup
])
@pytest.mark.slow
def test_resume_is_bit_exact_with_each_optimiser(tmp_path, digits, options):
    params_a, params_b, state_a, state_b = straight_and_resumed(tmp_path, digits, options)
    assert all(np.array_equal(params_a[k], params_b[k]) for k in params_a)
    assert set(state_a) == set(state_b) and all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
    assert "step" in state_a and int(state_a["step"]) == 16  # Adam's update count: 2 epochs of 8 steps
    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert all(h["lr"] > 0 for h in metrics["epochs"])


def test_adamw_decays_the_kernels_only(tmp_path, digits):
    """With a learning rate of (almost) zero for the Adam step, only the weight decay moves the weights: every
    kernel shrinks, no bias or LayerNorm parameter changes."""
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--optimizer", "adamw", "--lr", "1e-12",
                         "--weight-decay", "1e9", "--warmup", "0", "--out", str(out)] + QUICK) == 0
    after = load_checkpoint(out / "checkpoint.npz")[0]
    import tinymixer as tm

    before = {k: tm.to_host(v) for k, v in
              tm.MlpMixer(**json.loads((out / "metrics.json").read_text())["model"], seed=0).params.items()}
    for name, value in after.items():
        if name.endswith("/kernel") and np.abs(before[name]).max() > 0:
            assert np.abs(value).max() < np.abs(before[name]).max(), name
        elif not name.endswith("/kernel"):
            np.testing.assert_allclose(value, before[name], atol=1e-6, err_msg=name)


def test_mixup_and_cutmix_together_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        options.parse_args(["--mixup", "0.2", "--cutmix", "1.0"])
    assert stop.value.code == 2 and "choose one" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["finetune", "paper-finetune", "pretrain", "scratch-cifar"])
@pytest.mark.slow
def test_every_recipe_is_in_help_and_the_settings_are_printed_and_saved(recipe, tmp_path, digits, capsys):
    help_text = " ".join(options.build_parser().format_help().split())
    assert recipe in help_text
    args, _ = options.parse_args(["--recipe", recipe])
    for name, value in options.RECIPES[recipe].items():
        assert getattr(args, name) == value, name
    out = tmp_path / "run"
    short = ["--config", "micro/4", "--epochs", "1", "--warmup", "2"] if recipe == "scratch-cifar" else \
        ["--epochs", "1", "--warmup", "0"]
    assert cifar10.main(["--data-dir", str(digits), "--recipe", recipe, "--out", str(out)] + short + QUICK) == 0
    assert f"recipe {recipe}" in capsys.readouterr().out  # the settings line
    saved = json.loads((out / "metrics.json").read_text())["options"]
    assert saved["recipe"] == recipe and all(saved[k] == v for k, v in options.RECIPES[recipe].items()
                                             if k not in ("batch_size", "epochs", "warmup", "config"))
