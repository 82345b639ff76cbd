"""train.fit, the short loop the lessons use: its schedule is never silently cut short."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import put

import tinymixer as tm
from tinymixer.training.train import fit


def tiny_data(n: int = 64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n)


def tiny_model():
    return tm.MlpMixer(num_classes=3, num_blocks=1, patch_size=4, hidden_dim=8, tokens_mlp_dim=4, channels_mlp_dim=8,
                       image_size=8)


def test_a_warmup_longer_than_the_run_is_an_error_not_silently_capped():
    images, labels = tiny_data()
    with pytest.raises(ValueError, match="longer than the whole run"):
        fit(tiny_model(), images, labels, epochs=2, batch_size=16, warmup=50)  # the run has 8 steps


def test_the_default_warmup_is_a_share_of_the_run(monkeypatch):
    seen = []
    real = tm.training.train.schedule
    monkeypatch.setattr(tm.training.train, "schedule", lambda *a: seen.append(a) or real(*a))
    images, labels = tiny_data()
    history = fit(tiny_model(), images, labels, epochs=5, batch_size=16)
    assert len(history) == 5 and {a[0] for a in seen} == {"cosine"} and {a[4] for a in seen} == {1}  # 5% of 20


def test_fewer_images_than_a_batch_is_an_error():
    images, labels = tiny_data(10)
    with pytest.raises(ValueError, match="less than one batch"):
        fit(tiny_model(), images, labels, epochs=1, batch_size=16)


def test_fit_refuses_what_it_cannot_train_on_with_what_to_do():
    """Each wrong argument a clear ValueError before anything trains: float images (fit scales uint8 pixels
    itself: scaled images were scaled again, silently, into a sliver around -1), grey images without a channel
    axis, labels that do not match, sizes below 1, a negative learning rate or clipping bound."""
    images, labels = tiny_data()
    scaled = (images.astype(np.float32) - 127.5) / 127.5
    for kwargs, says in (({"images": scaled}, "uint8 pixels .* float32 .* gives the pixels back"),
                         ({"images": images[..., 0]}, r"add a channel axis, images\[\.\.\., None\]"),
                         ({"labels": labels[:10]}, "one per image: 64 images"),
                         ({"labels": labels.astype(float)}, "must be integers"),
                         ({"test": (scaled[:8], labels[:8])}, "test images as uint8"),
                         ({"batch_size": 0}, "batch_size must be a whole number, at least 1"),
                         ({"epochs": -1}, "epochs must be"), ({"crop_padding": -2}, "crop_padding must be"),
                         ({"lr": -1.0}, "lr must be positive"), ({"clip": -1.0}, "clip 0 .off. or positive")):
        arguments = {"images": images, "labels": labels, "epochs": 1, "batch_size": 16} | kwargs
        with pytest.raises(ValueError, match=says):
            fit(tiny_model(), arguments.pop("images"), arguments.pop("labels"), **arguments)


def test_a_negative_clipping_bound_is_refused_not_a_step_uphill():
    grads = {"w": np.array([3.0, 4.0])}
    with pytest.raises(ValueError, match="max_norm must be positive"):
        tm.clip_by_global_norm(grads, -1.0)
    assert grads["w"].tolist() == [3.0, 4.0]  # untouched
    tm.clip_by_global_norm(grads, 1.0)
    np.testing.assert_allclose(grads["w"], [0.6, 0.8])


@pytest.mark.parametrize("parts", [0, 5, 2.0])
def test_accumulation_parts_from_one_to_the_batch(parts):
    model, rng = float64_model(), np.random.default_rng(0)
    images, labels = rng.uniform(-1, 1, (4, 8, 8, 3)), rng.integers(0, 3, 4)
    with pytest.raises(ValueError, match=f"accumulate={parts!r}: .* from 1 to 4"):
        one_step(model, images, labels, accumulate=parts)


def one_step(model, images, labels, **kwargs):
    optimizer = tm.SGD(momentum=0.9)
    return tm.training.train.run_step(model, optimizer, images, labels, 0.1, 0.0, **kwargs)


def float64_model(seed: int = 0):
    model = tm.MlpMixer(num_classes=3, num_blocks=2, patch_size=4, hidden_dim=8, tokens_mlp_dim=4,
                        channels_mlp_dim=8, image_size=8, dtype="float64", seed=seed)
    put(model.params["head/kernel"], np.random.default_rng(seed).standard_normal((8, 3)))  # all gradients live
    return model


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_gradient_accumulation_gives_the_whole_batch_update(parts):
    """K parts of a batch (unequal when K does not divide it), their gradients added, one update: the update of
    the whole batch at once, to float rounding; loss and logits of the whole batch too. No clipping, so a part's
    gradient of the wrong size would show."""
    rng = np.random.default_rng(1)
    images, labels = rng.uniform(-1, 1, (14, 8, 8, 3)), rng.integers(0, 3, 14)
    whole, accumulated = float64_model(), float64_model()
    loss_a, logits_a = one_step(whole, images, labels)
    loss_b, logits_b = one_step(accumulated, images, labels, accumulate=parts)
    for name in whole.params:
        np.testing.assert_allclose(accumulated.params[name], whole.params[name], rtol=0, atol=1e-14)
    assert float(loss_b) == pytest.approx(float(loss_a), abs=1e-14)
    np.testing.assert_allclose(logits_b, logits_a, rtol=0, atol=1e-14)
    moved = max(float(np.abs(whole.params[k] - float64_model().params[k]).max()) for k in whole.params)
    assert moved > 1e-3  # the step did something


def test_head_only_updates_the_head_alone_with_the_full_models_head_gradient():
    rng = np.random.default_rng(2)
    images, labels = rng.uniform(-1, 1, (6, 8, 8, 3)), rng.integers(0, 3, 6)
    full, probe = float64_model(), float64_model()
    before = {k: v.copy() for k, v in probe.params.items()}
    _, dlogits = tm.softmax_cross_entropy(full.forward(images), labels)
    full.backward(dlogits)  # the head's gradient of the whole model, for reference
    seen, features = [], probe.features
    probe.features = lambda x: seen.append(len(x)) or features(x)
    one_step(probe, images, labels, head_only=True, accumulate=2)
    assert seen == [3, 3]  # in two parts, as asked: the activations of one part at a time
    for name in probe.params:
        if name.startswith("head/"):  # SGD's first step from zero momentum: -lr * gradient
            np.testing.assert_allclose(probe.params[name], before[name] - 0.1 * full.grads[name], atol=1e-14)
        else:
            np.testing.assert_array_equal(probe.params[name], before[name])


def test_the_core_step_is_run_step_with_every_option_off_bit_for_bit():
    """train_step (forward, loss, backward, update) and run_step (the pieces a run's options add) take the same
    steps when the options are off: weights, loss and logits equal to the last bit, three steps with momentum and
    clipping, on float32 (where a reordered sum would show)."""
    rng = np.random.default_rng(3)
    images, labels = rng.uniform(-1, 1, (12, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 12)
    core, run = tiny_model(), tiny_model()
    opt_core, opt_run = tm.SGD(momentum=0.9), tm.SGD(momentum=0.9)
    for _ in range(3):
        loss_a, logits_a = tm.training.train.train_step(core, opt_core, images, labels, 0.5, 0.01)
        loss_b, logits_b = tm.training.train.run_step(run, opt_run, images, labels, 0.5, 0.01)
        assert float(loss_a) == float(loss_b) and np.array_equal(logits_a, logits_b)
    assert np.array_equal(core.params.buffer, run.params.buffer)
    assert not np.array_equal(core.params.buffer, tiny_model().params.buffer)  # the steps moved the weights


def test_train_step_fits_a_screen_and_still_takes_a_runs_options_with_a_warning():
    import inspect

    source = inspect.getsource(tm.training.train.train_step)
    assert len(source.splitlines()) <= 25  # the core step reads in one screen
    rng = np.random.default_rng(4)
    images, labels = rng.uniform(-1, 1, (6, 8, 8, 3)), rng.integers(0, 3, 6)
    old, new = float64_model(), float64_model()
    with pytest.warns(DeprecationWarning, match="run_step"):
        tm.training.train.train_step(old, tm.SGD(), images, labels, 0.1, 0.0, label_smoothing=0.1, accumulate=2)
    tm.training.train.run_step(new, tm.SGD(), images, labels, 0.1, 0.0, label_smoothing=0.1, accumulate=2)
    assert np.array_equal(old.params.buffer, new.params.buffer)


def test_the_gradients_memory_is_made_by_the_first_backward_and_reused():
    model = float64_model()
    with pytest.raises(RuntimeError, match="after the first backward"):
        model.grad_buffer  # noqa: B018 - an evaluation-only network has no gradient memory
    rng = np.random.default_rng(5)
    images, labels = rng.uniform(-1, 1, (4, 8, 8, 3)), rng.integers(0, 3, 4)
    one_step(model, images, labels)
    buffer = model.grad_buffer
    one_step(model, images, labels)
    assert model.grad_buffer is buffer and model.gradients() is model.grads  # the same memory, step after step
    assert all(np.shares_memory(view, buffer) for view in model.grads.values())


def test_transform_sees_each_augmented_batch_and_the_model_trains_on_what_it_returns(monkeypatch):
    """The transform comes after crop/flip (it gets augmentation's output, not the stored images) and before
    scaling: training through a transform that blanks every batch is training on blank images."""
    images, labels = tiny_data()
    seen = []
    from tinymixer.data import pipeline

    real_augment = pipeline.apply_augmentation  # crop and flip, in the one batch path fit takes
    marked = lambda batch, draws, rows: np.full_like(real_augment(batch, draws, rows), 7)  # noqa: E731

    def record(batch):
        seen.append(batch.copy())
        return np.zeros_like(batch)

    monkeypatch.setattr(pipeline, "apply_augmentation", marked)
    through, direct = tiny_model(), tiny_model()
    fit(through, images, labels, epochs=2, batch_size=16, crop_padding=2, flip=True, transform=record)
    assert len(seen) == 8 and all(b.shape == (16, 8, 8, 3) and b.dtype == np.uint8 and (b == 7).all() for b in seen)
    monkeypatch.setattr(pipeline, "apply_augmentation", real_augment)
    fit(direct, np.zeros_like(images), labels, epochs=2, batch_size=16, crop_padding=2, flip=True)  # same draws
    for name in through.params:
        np.testing.assert_array_equal(through.params[name], direct.params[name])
    moved = max(float(np.abs(direct.params[k] - tiny_model().params[k]).max()) for k in direct.params)
    assert moved > 0  # blank images still move the head: the comparison is not between two untouched models


def test_no_transform_leaves_the_run_as_before():
    images, labels = tiny_data()
    a, b = tiny_model(), tiny_model()
    fit(a, images, labels, epochs=1, batch_size=16, crop_padding=2, flip=True)
    fit(b, images, labels, epochs=1, batch_size=16, crop_padding=2, flip=True, transform=lambda batch: batch)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_every_epoch_record_has_the_wall_time_so_far_and_progress_gets_each_record(monkeypatch):
    clock = iter(range(100, 200, 10))  # perf_counter: 100 at the start, then +10 s at each epoch's end
    monkeypatch.setattr(tm.training.train.time, "perf_counter", lambda: float(next(clock)))
    images, labels = tiny_data()
    reported = []
    history = fit(tiny_model(), images, labels, epochs=3, batch_size=16, test=(images[:8], labels[:8]),
                  progress=reported.append)
    assert [h["seconds"] for h in history] == [10.0, 20.0, 30.0]
    assert reported == history and [h["epoch"] for h in reported] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"} <= set(history[0])
