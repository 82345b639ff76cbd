"""train.fit, the short loop the lessons use: its schedule is never silently cut short."""

from __future__ import annotations

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.train import fit


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
    real = tm.train.warmup_cosine
    monkeypatch.setattr(tm.train, "warmup_cosine", lambda *a: seen.append(a) or real(*a))
    images, labels = tiny_data()
    history = fit(tiny_model(), images, labels, epochs=5, batch_size=16)
    assert len(history) == 5 and {a[3] for a in seen} == {1}  # 5% of 20 steps


def test_fewer_images_than_a_batch_is_an_error():
    images, labels = tiny_data(10)
    with pytest.raises(ValueError, match="less than one batch"):
        fit(tiny_model(), images, labels, epochs=1, batch_size=16)
