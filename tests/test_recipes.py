"""Recipes as data (tinymixer/training/recipes.py): one source for the command line's defaults, train.fit and the
experiments; each recipe's settings reach the optimiser, the schedule, the loss and the batches of fit."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.trainer import options
from tinymixer.training import recipes
from tinymixer.training.train import fit


def test_the_command_lines_defaults_are_the_recipes_defaults():
    args, _ = options.parse_args([])
    for name, value in recipes.DEFAULTS.items():
        assert getattr(args, name) == value, name
    assert options.RECIPES is recipes.RECIPES  # one table, not a copy


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_a_recipe_is_every_default_with_its_own_changes(name):
    settings = recipes.recipe(name)
    assert set(settings) == set(recipes.DEFAULTS)
    for key, value in recipes.RECIPES[name].items():
        if key in recipes.DEFAULTS:
            assert settings[key] == value
    assert recipes.recipe(name, lr=0.5, warmup=None)["lr"] == 0.5  # a given value wins, None keeps the recipe's
    assert recipes.recipe(name, warmup=None)["warmup"] == settings["warmup"]


def test_bad_recipe_names_and_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown recipe 'fintune': choose one of finetune"):
        recipes.recipe("fintune")
    with pytest.raises(ValueError, match="learning_rate: not a recipe setting"):
        recipes.recipe("finetune", learning_rate=0.1)


def test_make_optimizer_follows_the_settings():
    names = ["stem/kernel", "stem/bias", "head/kernel"]
    sgd = recipes.make_optimizer(recipes.recipe("finetune"), names)
    assert type(sgd) is tm.SGD and sgd.momentum == 0.9
    adamw = recipes.make_optimizer(recipes.recipe("pretrain"), names)
    assert type(adamw) is tm.AdamW and adamw.weight_decay == 0.1
    assert type(recipes.make_optimizer(recipes.recipe("scratch-cifar"), names)) is tm.Adam
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        recipes.make_optimizer(recipes.recipe("finetune") | {"optimizer": "lion"}, names)


def test_describe_says_what_the_recipe_does():
    assert recipes.describe(recipes.recipe("finetune")) == ("SGD momentum 0.9, clipping at global norm 1, warm-up 5% "
                                                            "then cosine decay to 0, no weight decay")
    words = recipes.describe(recipes.recipe("scratch-cifar"))
    assert words.startswith("Adam, no clipping, warm-up 5ep then cosine decay to 1e-06, L2 5e-05")
    assert "label smoothing 0.1" in words and "CutMix 1.0" in words and "RandAugment 2,9" in words


def data(n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n)


def small_model(**rates):
    return tm.MlpMixer(num_classes=3, num_blocks=1, patch_size=4, hidden_dim=8, tokens_mlp_dim=4,
                       channels_mlp_dim=8, image_size=8, seed=0, **rates)


def test_fit_with_the_default_recipe_is_fit_as_it_was():
    """fit's default recipe is the paper's fine-tuning recipe at lr 0.05: the same weights as naming it, and as
    giving its settings one by one."""
    images, labels = data()
    runs = [small_model(), small_model(), small_model()]
    fit(runs[0], images, labels, epochs=2, batch_size=16)
    fit(runs[1], images, labels, epochs=2, batch_size=16, recipe="finetune")
    fit(runs[2], images, labels, epochs=2, batch_size=16, lr=0.05, warmup="5%", clip=1.0, momentum=0.9)
    assert np.array_equal(runs[0].params.buffer, runs[1].params.buffer)
    assert np.array_equal(runs[0].params.buffer, runs[2].params.buffer)
    assert not np.array_equal(runs[0].params.buffer, small_model().params.buffer)


def test_fit_applies_the_recipes_optimiser_loss_and_batches(monkeypatch):
    """scratch-cifar through fit: Adam, no clipping, label smoothing 0.1 and CutMix batches reach the step."""
    import tinymixer.training.train as train

    seen = []
    real = train.run_step

    def spy(model, optimizer, images, labels, lr, clip, **kwargs):
        seen.append((type(optimizer), clip, kwargs["label_smoothing"], kwargs["mix"] is not None, lr))
        return real(model, optimizer, images, labels, lr, clip, **kwargs)

    monkeypatch.setattr(train, "run_step", spy)
    images, labels = data()
    fit(small_model(), images, labels, epochs=2, batch_size=16, recipe="scratch-cifar", warmup=2)
    assert {s[:4] for s in seen} == {(tm.Adam, 0.0, 0.1, True)}
    assert seen[0][4] == pytest.approx(0.0) and max(s[4] for s in seen) == pytest.approx(1e-3)  # warm-up to 1e-3


def test_fit_takes_label_smoothing_on_its_own(monkeypatch):
    import tinymixer.training.train as train

    seen = []
    real = train.run_step
    monkeypatch.setattr(train, "run_step", lambda *a, **k: seen.append(k["label_smoothing"]) or real(*a, **k))
    images, labels = data()
    fit(small_model(), images, labels, epochs=1, batch_size=16, label_smoothing=0.1)
    assert seen and set(seen) == {0.1}


def test_fit_refuses_a_recipe_whose_model_rates_the_model_lacks():
    images, labels = data()
    cnn = tm.ResNet(num_classes=3, widths=(8,), depths=(1,), groups=4, image_size=8)
    with pytest.raises(ValueError, match="which a ResNet does not have: choose a recipe without it"):
        fit(cnn, images, labels, epochs=1, batch_size=16, recipe="pretrain")
    with pytest.raises(ValueError, match="stochastic_depth=0.1"):
        fit(small_model(), images, labels, epochs=1, batch_size=16, recipe="pretrain")
    history = fit(small_model(stochastic_depth=0.1), images, labels, epochs=1, batch_size=16, recipe="pretrain")
    assert np.isfinite(history[0]["train_loss"])
    # a recipe that says nothing of the model's rates trains a regularised model with the model's own rates
    assert np.isfinite(fit(small_model(dropout=0.1), images, labels, epochs=1, batch_size=16)[0]["train_loss"])
