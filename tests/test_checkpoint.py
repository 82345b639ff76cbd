"""Checkpoints: the official key layout, exact round trip, atomic writes, clear errors."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    load_params_into,
    save_checkpoint,
    save_model,
)


def test_round_trip_is_exact_and_uses_official_names(tmp_path):
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, seed=1)
    opt_state = {k: np.full(v.shape, 0.5, np.float32) for k, v in model.params.items()}
    path = save_checkpoint(tmp_path / "c.npz", model.params, opt_state, {"model": model.config(), "step": 7})
    with np.load(path) as raw:  # readable as a plain .npz, keys as in the official checkpoints
        assert "stem/kernel" in raw.files and "MixerBlock_0/token_mixing/Dense_0/kernel" in raw.files
    params, state, meta = load_checkpoint(path)
    assert all(np.array_equal(params[k], tm.to_host(v)) for k, v in model.params.items())
    assert set(params) == set(model.params)
    assert all(np.array_equal(state[k], opt_state[k]) for k in opt_state) and meta["step"] == 7
    again = load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(again(x), model(x))


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.ones(3)})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived in the middle of writing

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(3)})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:100], lambda b: b""])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.ones(1000)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=r"c.npz is (unreadable|empty).*truncated or corrupted"):
        load_checkpoint(path)


def test_a_folder_or_a_text_file_is_named_for_what_it_is(tmp_path):
    """A run folder is not 'corrupted' (the old message advised deleting it), nor is a text file 'pickled data'."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"run is a folder; a checkpoint is a .npz file$"):
        load_model(run)
    save_checkpoint(run / "checkpoint.npz", {"w": np.ones(3)})
    with pytest.raises(CheckpointError, match=r"run is a folder.*did you mean .*run/checkpoint.npz\?"):
        load_model(run)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes.txt is not a checkpoint: .*not one \(it starts with b'hell'\)"):
        load_checkpoint(text)


def test_checkpoints_honour_the_umask(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the finished file gets the mode open() would give it."""
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.npz", {"w": np.ones(3)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        save_checkpoint(path, {"w": np.ones(3)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_missing_checkpoint_and_mismatched_model(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.npz")
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16)
    other = tm.MlpMixer.from_name("micro/4", num_classes=5, image_size=16)
    with pytest.raises(CheckpointError, match=r"does not fit this model.*head/kernel"):
        load_params_into(model, {k: tm.to_host(v) for k, v in other.params.items()})
    path = save_checkpoint(tmp_path / "bare.npz", {"w": np.ones(3)})
    with pytest.raises(CheckpointError, match="not in the Mixer checkpoint layout"):
        load_model(path)


@pytest.mark.parametrize("build", [
    lambda: tm.MlpMixer.from_name("micro/4", num_classes=4, image_size=16, gelu="erf", dtype="float64", seed=2),
    lambda: tm.make_model("cnn-micro", num_classes=4, image_size=16, seed=2)])
def test_save_model_keeps_every_setting_and_params_alone_say_how(tmp_path, build):
    """save_model writes the network's configuration beside its weights: load_model builds the same network (a
    Mixer's exact GELU and float64 too, which the shapes alone do not show); the parameters alone of a ResNet are
    refused with what to do instead."""
    model = build()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3))
    back = load_model(save_model(tmp_path / "m.npz", model))
    assert back.config() == model.config()
    np.testing.assert_array_equal(tm.to_host(back.forward(images, train=False)),
                                  tm.to_host(model.forward(images, train=False)))
    if isinstance(model, tm.ResNet):
        with pytest.raises(CheckpointError, match=r"carries no model configuration.*save_model\(path, model\)"):
            load_model(save_checkpoint(tmp_path / "bare.npz", model.params))


def test_object_arrays_and_a_broken_configuration_are_named_as_what_they_are(tmp_path):
    np.savez(tmp_path / "objects.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="holds Python objects .* not opened here"):
        load_checkpoint(tmp_path / "objects.npz")  # was "truncated or corrupted (... disk ran out of space?)"
    model = tm.MlpMixer.from_name("micro/4", num_classes=4, image_size=16)
    path = save_checkpoint(tmp_path / "edited.npz", model.params, None, {"model": model.config() | {"num_blocks": 0}})
    with pytest.raises(CheckpointError, match="edited.npz: its model configuration .* builds no network"):
        load_model(path)


def test_an_official_style_npz_loads_into_a_model(tmp_path):
    """The official checkpoints are plain .npz files of the parameters under their flat '/'-joined names."""
    source = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, seed=5)
    path = tmp_path / "official.npz"
    np.savez(path, **{k: tm.to_host(v) for k, v in source.params.items()})  # no optimiser state, no metadata
    params, optimizer_state, meta = load_checkpoint(path)
    assert optimizer_state == {} and meta == {}
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=16, seed=0)
    load_params_into(model, params, path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), source(x))


def test_load_model_reads_the_configuration_off_an_official_style_npz(tmp_path):
    source = tm.MlpMixer(num_classes=7, num_blocks=3, patch_size=4, hidden_dim=16, tokens_mlp_dim=8,
                         channels_mlp_dim=24, image_size=24, seed=2)
    path = tmp_path / "official.npz"
    np.savez(path, **{k: tm.to_host(v) for k, v in source.params.items()})
    model = load_model(path)
    config = {k: v for k, v in source.config().items() if k != "gelu"}
    assert {k: v for k, v in model.config().items() if k != "gelu"} == config
    x = np.random.default_rng(1).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), source(x))
    assert load_model(path, dtype="float64").dtype == np.float64


def test_load_model_refuses_a_non_square_token_grid(tmp_path):
    source = tm.MlpMixer.from_name("micro/4", num_classes=3, image_size=(8, 16))  # S = 2 x 4 tokens
    path = tmp_path / "wide.npz"
    np.savez(path, **{k: tm.to_host(v) for k, v in source.params.items()})
    with pytest.raises(CheckpointError, match="8 tokens is not a square grid.*image_size"):
        load_model(path)
