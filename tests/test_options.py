"""The options of a training run (tinymixer/trainer/options.py), called directly: a checkpoint's remembered options
come back as they were (new and old formats), applied as defaults under what is given now; recipes sit between the
defaults and what a run used; a resumed run refuses a new model shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymixer.trainer import options
from tinymixer.trainer.options import OptionError, parse_args, remembered, saved_defaults


def test_remembered_options_come_back_as_they_were(tmp_path):
    args, _ = parse_args(["--data-dir", str(tmp_path), "--lr", "0.01", "--no-flip", "--randaugment", "2,9",
                          "--limit-train", "100", "--crop-padding", "2", "--head-only", "--warmup", "2ep"])
    again, given = parse_args([], saved_defaults(remembered(args)))
    assert given == set()
    assert {k: getattr(again, k) for k in options.REMEMBERED} == {k: getattr(args, k) for k in options.REMEMBERED}
    assert isinstance(again.data_dir, Path) and again.data_dir == tmp_path.absolute()


def test_an_old_checkpoints_text_values_are_typed_again():
    old = {"lr": "0.01", "epochs": "3", "no_flip": "True", "head_only": "False", "limit_train": "None",
           "crop_padding": "auto", "batch_size": "64", "resume": "None"}
    args, _ = parse_args([], saved_defaults(old))
    assert (args.lr, args.epochs, args.flip, args.head_only, args.limit_train, args.crop_padding, args.batch_size) \
        == (0.01, 3, False, False, None, "auto", 64)


def test_given_options_win_over_remembered_ones_which_win_over_their_recipe():
    saved = saved_defaults({"recipe": "pretrain", "lr": 0.002, "mixup": 0.5})
    args, given = parse_args(["--lr", "0.003"], saved)
    assert args.lr == 0.003 and given == {"lr"}
    assert args.mixup == 0.5 and args.optimizer == "adamw"  # remembered, and the recipe's where nothing was saved
    args, _ = parse_args([], saved)
    assert args.lr == 0.002  # the run's own value, not pretrain's 1e-3


def test_a_resumed_run_refuses_a_new_model_shape_and_notes_other_changes(tmp_path):
    first, _ = parse_args(["--config", "micro/4", "--lr", "0.05"])
    meta = {"options": remembered(first)}
    args, notes = options.with_remembered_options(meta, ["--lr", "0.01"], {"lr"}, "resumed", tmp_path / "c.npz")
    assert args.lr == 0.01 and notes == ["note: --lr is 0.01 now, 0.05 in the run being resumed"]
    with pytest.raises(OptionError, match="--config micro/4; --config tiny/4 cannot change it"):
        options.with_remembered_options(meta, ["--config", "tiny/4"], {"config"}, "resumed", tmp_path / "c.npz")


def test_model_options_of_the_other_family_are_refused():
    args, _ = parse_args(["--model", "cnn", "--dropout", "0.1"])
    with pytest.raises(OptionError, match="the CNN has no patches, dropout or stochastic depth"):
        options.check_model_options(args)
    args, _ = parse_args(["--model", "cnn", "--config", "tiny/4"])
    with pytest.raises(OptionError, match="not a cnn size"):
        options.check_model_options(args)
    args, _ = parse_args(["--model", "cnn"])
    options.check_model_options(args)
    assert args.config == options.FAMILIES["cnn"]
