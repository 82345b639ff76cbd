"""Helpers shared by the tests (imported by name: the tests folder is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np

import tinymixer as tm

TOL = 1e-7  # float64 finite differences of these smooth functions land at 1e-9..1e-12; a wrong backward at >1e-3


def assert_gradients_ok(errors: dict[str, float], tol: float = TOL) -> None:
    """Every relative error below tol (printed, so `pytest -s` shows the measured numbers)."""
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert errors, "nothing was checked"
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


def small_model(dtype: str = "float64", randomize: bool = True, seed: int = 0, **overrides) -> tm.MlpMixer:
    """A Mixer small enough for per-element finite differences: 8x8 images, patch 4 (S=4), C=6, 2 blocks.

    With ``randomize`` every parameter (the zero head, the unit LayerNorm scales, the zero biases too) is drawn
    at random, so that no gradient is zero by construction and every path is exercised."""
    config = dict(num_classes=3, num_blocks=2, patch_size=4, hidden_dim=6, tokens_mlp_dim=5, channels_mlp_dim=7,
                  image_size=8, dtype=dtype, seed=seed)
    config.update(overrides)
    model = tm.MlpMixer(**config)
    if randomize:
        r = np.random.default_rng(seed + 100)
        for value in model.params.values():
            value[...] = 0.5 * r.standard_normal(value.shape)
    return model
