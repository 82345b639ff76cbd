"""Helpers shared by the tests (imported by name: the tests folder is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np

import tinymixer as tm

TOL = 1e-7  # float64 finite differences of these smooth functions land at 1e-9..1e-12; a wrong backward at >1e-3


def put(target, values) -> None:
    """Write host values into an array of either backend: ``target[...] = values`` moved to ``target``'s device
    first (CuPy refuses a NumPy array assigned into a device array, and so does the stand-in)."""
    target[...] = tm.backend.array_module(target).asarray(values)


def nudge(target, delta) -> None:
    """``target += delta`` in place, with ``delta`` a host array: moved to ``target``'s device first."""
    target += tm.backend.array_module(target).asarray(delta)


def host(array) -> np.ndarray:
    """Any array as a NumPy array, for comparisons (np.testing refuses device arrays)."""
    return tm.to_host(array)


def host_params(model) -> dict[str, np.ndarray]:
    """A model's parameters as NumPy arrays, by name (for layer-level computations in the tests)."""
    return {name: host(value) for name, value in model.params.items()}


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
            put(value, 0.5 * r.standard_normal(value.shape))
    return model


def fake_cifar(num_train: int = 600, num_test: int = 100, size: int = 32, classes: int = 10, seed: int = 0):
    """A random data set in the CIFAR-10 shapes (uint8 images, int labels), for loader and script tests."""
    from tinymixer.data import Dataset

    r = np.random.default_rng(seed)
    return Dataset(r.integers(0, 256, (num_train, size, size, 3), dtype=np.uint8), r.integers(0, classes, num_train),
                   r.integers(0, 256, (num_test, size, size, 3), dtype=np.uint8), r.integers(0, classes, num_test),
                   [f"class{i}" for i in range(classes)])


def make_cifar_archive(folder, dataset=None):
    """Write ``folder/cifar-10-python.tar.gz`` in the exact layout of the real archive; return (path, md5)."""
    import tarfile
    import tempfile
    from pathlib import Path

    from tinymixer.data import FOLDER_NAME, md5sum, save_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(Path(tmp) / FOLDER_NAME, dataset or fake_cifar())
        archive = folder / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(Path(tmp) / FOLDER_NAME, arcname=FOLDER_NAME)
    return archive, md5sum(archive)


def mlp_params(rng: np.random.Generator, d: int, hidden: int) -> dict[str, np.ndarray]:
    """Random parameters of an MLP block d -> hidden -> d (float64, scaled like a LeCun-normal initialisation)."""
    return {"Dense_0/kernel": rng.standard_normal((d, hidden)) / np.sqrt(d),
            "Dense_0/bias": rng.standard_normal(hidden),
            "Dense_1/kernel": rng.standard_normal((hidden, d)) / np.sqrt(hidden),
            "Dense_1/bias": rng.standard_normal(d)}


def block_params(rng: np.random.Generator, s: int, c: int, ds: int, dc: int) -> dict[str, np.ndarray]:
    """Random parameters of a Mixer block on S tokens x C channels, LayerNorm scales and biases randomised too."""
    from tinymixer.nn.blocks import prefixed

    params = {"LayerNorm_0/scale": 1 + 0.3 * rng.standard_normal(c), "LayerNorm_0/bias": 0.3 * rng.standard_normal(c),
              "LayerNorm_1/scale": 1 + 0.3 * rng.standard_normal(c), "LayerNorm_1/bias": 0.3 * rng.standard_normal(c)}
    params.update(prefixed(mlp_params(rng, s, ds), "token_mixing"))
    params.update(prefixed(mlp_params(rng, c, dc), "channel_mixing"))
    return params
