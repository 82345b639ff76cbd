"""examples/cifar10.py fine-tuning from a checkpoint (--init), at another resolution (--image-size), with gradient
accumulation (--accumulate), the head alone (--head-only), and the official fine-tuning defaults (--recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import nudge
from test_cifar10_script import cifar10, digits_folder, params_of

import tinymixer as tm
from tinymixer.trainer import options

QUICK = ["--limit-train", "256", "--limit-test", "100", "--no-progress", "--batch-size", "32", "--no-flip"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A checkpoint in the official layout (parameters only), for 1-channel 8x8 images, 5 classes, patch 2."""
    model = tm.MlpMixer(num_classes=5, num_blocks=2, patch_size=2, hidden_dim=16, tokens_mlp_dim=8,
                        channels_mlp_dim=32, image_size=8, in_channels=1, seed=7)
    rng = np.random.default_rng(0)
    for value in model.params.values():
        nudge(value, 0.05 * rng.standard_normal(value.shape))
    path = tmp_path_factory.mktemp("official") / "Mixer-test.npz"
    np.savez(path, **{k: tm.to_host(v) for k, v in model.params.items()})
    return path


@pytest.mark.slow
def test_init_at_twice_the_resolution(tmp_path, digits, official, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--init", str(official), "--image-size", "16", "--epochs", "1",
                         "--out", str(out)] + QUICK) == 0
    printed = capsys.readouterr().out
    assert "a new zero-initialised head for 10 classes (the checkpoint's has 5)" in printed
    assert "token mixing expanded from 8x8 to 16x16 images: block-diagonal over 2x2 tiles" in printed
    params = params_of(out / "checkpoint.npz")
    assert params["MixerBlock_0/token_mixing/Dense_0/kernel"].shape == (64, 32) and params["head/bias"].shape == (10,)
    assert cifar10.main(["--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0  # remembered
    assert json.loads((out / "metrics.json").read_text())["model"]["image_size"] == [16, 16]


def test_a_resolution_the_method_cannot_reach_is_a_clear_error(tmp_path, digits, official, capsys):
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--data-dir", str(digits), "--init", str(official), "--image-size", "12", "--epochs", "1",
                      "--out", str(tmp_path)] + QUICK)
    assert stop.value.code == 2 and "Resolutions that work: 8x8, 16x16" in capsys.readouterr().err


@pytest.mark.slow
def test_accumulation_follows_the_whole_batch(tmp_path, digits):
    base = ["--data-dir", str(digits), "--epochs", "1", "--dtype", "float64", "--clip", "0"] + QUICK
    assert cifar10.main(base + ["--out", str(tmp_path / "whole")]) == 0
    assert cifar10.main(base + ["--out", str(tmp_path / "parts"), "--accumulate", "4"]) == 0
    a, b = params_of(tmp_path / "whole/checkpoint.npz"), params_of(tmp_path / "parts/checkpoint.npz")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-12


def test_head_only_changes_nothing_but_the_head(tmp_path, digits, official):
    out = tmp_path / "probe"
    assert cifar10.main(["--data-dir", str(digits), "--init", str(official), "--head-only", "--epochs", "1",
                         "--out", str(out)] + QUICK) == 0
    trained, start = params_of(out / "checkpoint.npz"), dict(np.load(official))
    for name, value in trained.items():
        if name.startswith("head/"):
            assert value.shape[-1] == 10 and np.abs(value).max() > 0
        else:
            np.testing.assert_array_equal(value, start[name])


def test_init_says_and_remembers_the_size_it_holds_and_refuses_a_size_beside_it(tmp_path, digits, capsys):
    """--init of a tiny/4 checkpoint: the run says tiny/4 and remembers it (it said the default, micro/4, and a
    later --resume with the true size was refused); --config or --patch-size beside --init is refused (ignored
    before)."""
    model = tm.MlpMixer.from_name("tiny/4", num_classes=10, image_size=8, in_channels=1, patch_size=2)
    start = tm.training.checkpoint.save_model(tmp_path / "tiny.npz", model)
    out = tmp_path / "ft"
    assert cifar10.main(["--data-dir", str(digits), "--init", str(start), "--epochs", "1", "--out", str(out)]
                        + QUICK) == 0
    assert "MLP-Mixer tiny/4: 1,0" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"] == "tiny/4"
    for extra in (["--config", "micro/4"], ["--patch-size", "4"]):
        with pytest.raises(SystemExit) as stop:
            cifar10.main(["--data-dir", str(digits), "--init", str(start), "--epochs", "1",
                          "--out", str(tmp_path / "no")] + QUICK + extra)
        assert stop.value.code == 2 and "--config and --patch-size do not apply" in capsys.readouterr().err


def test_the_paper_finetune_recipe_sets_its_defaults_and_options_still_win(capsys):
    args, _ = options.parse_args(["--recipe", "paper-finetune"])
    assert (args.batch_size, args.lr, args.warmup, args.momentum, args.clip) == (512, 0.03, "500", 0.9, 1.0)
    args, given = options.parse_args(["--recipe", "paper-finetune", "--lr", "0.01"])
    assert args.lr == 0.01 and args.batch_size == 512 and given == {"recipe", "lr"}


def test_init_from_a_file_that_is_no_mixer_is_a_one_line_error(tmp_path, digits):
    import subprocess
    import sys

    from test_cifar10_script import SCRIPT

    vit = tmp_path / "ViT-B_16.npz"  # another architecture's checkpoint: no stem, no MixerBlock_*
    np.savez(vit, **{"embedding/kernel": np.zeros((16, 16, 3, 8)), "Transformer/encoder_norm/scale": np.ones(8)})
    torn = tmp_path / "torn.npz"
    torn.write_bytes(vit.read_bytes()[:200])
    for path, message in [(vit, "not in the Mixer checkpoint layout"), (torn, "truncated or corrupted")]:
        result = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(digits), "--init", str(path),
                                 "--out", str(tmp_path / "run")] + QUICK, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
