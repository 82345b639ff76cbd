"""Few-shot linear evaluation of frozen features: the paper's closed-form regularised least-squares classifier.

The paper reports, besides fine-tuning, "few-shot" accuracies of its pre-trained models: take ``shots`` training
images per class (1, 5, 10 or 25), compute their frozen pre-logits features (``MlpMixer.features``), fit a linear
map from the features to {-1, +1}^K target vectors by L2-regularised least squares, solved in closed form, and
classify the test set by the largest of the K outputs. Nothing is trained by gradient descent.

What the official code does (google-research/big_vision, ``big_vision/evaluators/fewshot_lsr.py`` and the
default configuration ``big_vision/configs/common_fewshot.py`` that its ``mlp_mixer_i1k.py`` uses), read and
followed here:

- The features are the model's ``pre_logits``: the pre-head LayerNorm's output averaged over the tokens
  (``big_vision/models/mlp_mixer.py``), which is ``MlpMixer.features``.
- They are *whitened* per feature with the mean and the standard deviation of the few-shot training samples
  themselves (the population std, ``jnp.std``, plus 1e-5): ``z = (x - mean) / (std + 1e-5)``; the test features go
  through the same map.
- A *bias* is a constant feature appended to every sample, of value 100 (``BIAS_CONSTANT = 100.0``), and
  regularised like every other weight: its penalty on the effective bias b = 100 v is l2 b^2 / 10^4, "almost
  unregularised" as the official comment says.
- The targets are the one-hot labels scaled to {-1, +1}: ``2 onehot(y) - 1``.
- The ridge regression argmin_V ||Z V - Y||^2 + l2 ||V||^2 is solved in closed form, in the primal form when there
  are at least as many samples as (augmented) dimensions, n >= d, else in the dual (kernel) form (see ``ridge``).
  The official code goes through an eigendecomposition of Z^T Z or Z Z^T, so that other values of l2 cost
  nothing more; it fits with one fixed value. A direct solve gives the same V (in float64 here; the official code
  computes in JAX's default float32).
- The default regularisation is ``l2_reg = 2.0 ** 10`` = 1024; the default shots are 1, 5, 10, 25; the default
  number of seeds is 3 (seeds 0, 1, 2), each a separate draw of the training samples, each reported.
- The draw: ``rng = np.random.default_rng(seed)``, then for every class in order a random permutation of that
  class's training indices, of which the first ``shots`` are taken. One draw per seed serves every shot count, so
  the 1-shot samples are among the 5-shot ones, and so on. ``sample_shots`` makes exactly these calls: on the same
  labels in the same order it picks the same images.

The probe is returned as a plain affine map of the raw features, the whitening and the bias folded in:
``scores = x @ W + b`` with ``W = V[:d] / std[:, None]`` and ``b = 100 V[d] - (mean / std) @ V[:d]``, which
equals ``[(x - mean) / std, 100] @ V``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..backend import to_host

L2 = 2.0 ** 10  # the official default regularisation (config.l2_reg)
BIAS_FEATURE = 100.0  # the official BIAS_CONSTANT: the constant feature that carries the bias
STD_EPS = 1e-5  # added to the features' standard deviation before dividing by it, as the official code does
SHOTS = (1, 5, 10, 25)  # the official default shot counts
NUM_SEEDS = 3  # the official default number of draws


def ridge(x: np.ndarray, y: np.ndarray, l2: float, form: str = "auto") -> np.ndarray:
    """The L2-regularised least-squares solution V (d, K) = argmin_V ||X V - Y||^2 + l2 ||V||^2, in closed form.

    Inputs: x (n, d), y (n, K), l2 > 0. Setting the gradient 2 X^T (X V - Y) + 2 l2 V to zero gives

        primal:  V = (X^T X + l2 I_d)^{-1} X^T Y        a d x d system: cheap when n >= d
        dual:    V = X^T (X X^T + l2 I_n)^{-1} Y        an n x n system: cheap when n < d (few shots, many features)

    which are equal because (X^T X + l2 I_d) X^T = X^T (X X^T + l2 I_n). ``form`` "auto" takes the primal form when
    n >= d, as the official code does, else the dual. Computed in float64.
    """
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 (with l2 = 0 the system is singular whenever n < d), got {l2}")
    if form not in ("auto", "primal", "dual"):
        raise ValueError(f"form must be 'auto', 'primal' or 'dual', got {form!r}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, d = x.shape
    if form == "primal" or (form == "auto" and n >= d):
        gram = x.T @ x  # (d, d)
        gram[np.diag_indices(d)] += l2
        return np.linalg.solve(gram, x.T @ y)  # (d, K)
    kernel = x @ x.T  # (n, n)
    kernel[np.diag_indices(n)] += l2
    return x.T @ np.linalg.solve(kernel, y)  # (d, n) @ (n, K) -> (d, K)


def signed_one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Targets in {-1, +1}^K: +1 at the label, -1 elsewhere, i.e. 2 onehot(y) - 1.  Returns (n, K) float64."""
    return 2.0 * (np.asarray(labels)[:, None] == np.arange(num_classes)) - 1.0


def fit_linear_probe(features: Any, labels: Any, num_classes: int, l2: float = L2, *, whiten: bool = True,
                     bias_feature: float = BIAS_FEATURE, form: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The official few-shot classifier on features (n, d) with labels (n,): returns W (d, K), b (K,), float64,
    such that ``scores = features @ W + b`` and the prediction is ``scores.argmax(1)``.

    1. with ``whiten``: z = (x - mean) / (std + 1e-5), mean and std per feature over these n samples   (n, d)
    2. with a nonzero ``bias_feature``: z <- [z, bias_feature], one constant column                 (n, d + 1)
    3. V = ridge(z, 2 onehot(y) - 1, l2)                                                            (d + 1, K)
    4. W = V[:d] / std[:, None], b = bias_feature V[d] - (mean / std) @ V[:d]: steps 1.-3. on raw features

    NumPy or CuPy arrays (the latter are copied to the host); the solve is in float64.
    """
    x = to_host(features).astype(np.float64)  # (n, d)
    y = to_host(labels).astype(np.int64)  # (n,)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"features must be (n, d) and labels (n,), got {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    d = x.shape[1]
    mean, std = (x.mean(axis=0), x.std(axis=0) + STD_EPS) if whiten else (np.zeros(d), np.ones(d))  # (d,), (d,)
    z = (x - mean) / std  # 1. (n, d)
    if bias_feature:
        z = np.concatenate([z, np.full((len(z), 1), bias_feature)], axis=1)  # 2. (n, d + 1)
    v = ridge(z, signed_one_hot(y, num_classes), l2, form)  # 3. (d + 1, K) or (d, K)
    w = v[:d] / std[:, None]  # 4. (d, K)
    b = (bias_feature * v[d] if bias_feature else np.zeros(num_classes)) - (mean / std) @ v[:d]  # (K,)
    return w, b


def predict(features: Any, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The probe's classes for features (n, d): argmax over k of features @ W + b.  Returns (n,) int64."""
    return (to_host(features).astype(np.float64) @ w + b).argmax(axis=1)


def sample_shots(labels: Any, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """Indices of ``shots`` training images of every class, drawn as the official code draws them: one generator
    ``default_rng(seed)``, a permutation of each class's indices in class order, the first ``shots`` of each.
    Returns (num_classes * shots,) int64, class 0's first. The same seed gives the same images, and a smaller
    ``shots`` a subset of a larger one's. A class with fewer than ``shots`` images is an error."""
    labels = to_host(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) < shots:
            raise ValueError(f"class {k} has {len(members)} training images, fewer than the {shots} shots asked for")
        picked.append(rng.permutation(members)[:shots])
    return np.concatenate(picked).astype(np.int64)


def few_shot_rows(labels: Any, shots: Iterable[int], seeds: Iterable[int], num_classes: int) -> np.ndarray:
    """The training images any of these (shots, seed) draws uses, sorted: the only ones whose features are needed
    (with nested draws, those of the largest shot count per seed)."""
    most = max(shots)
    return np.unique(np.concatenate([sample_shots(labels, most, seed, num_classes) for seed in seeds]))


def few_shot_accuracy(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, shots: int,
                      seed: int = 0, l2: float = L2, num_classes: int | None = None) -> float:
    """Test accuracy of the probe fitted on ``shots`` training images per class drawn with ``seed``.

    train_features (N, d), train_labels (N,): the pool to draw from (only the drawn rows are read);
    test_features (M, d), test_labels (M,). ``num_classes`` defaults to the largest label seen + 1."""
    train_labels, test_labels = to_host(train_labels), to_host(test_labels)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    rows = sample_shots(train_labels, shots, seed, num_classes)  # (K * shots,)
    w, b = fit_linear_probe(to_host(train_features)[rows], train_labels[rows], num_classes, l2)
    return float((predict(test_features, w, b) == test_labels).mean())


def few_shot_evaluation(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any,
                        shots: Sequence[int] = SHOTS, seeds: int = NUM_SEEDS, l2: float = L2,
                        num_classes: int | None = None) -> dict[int, np.ndarray]:
    """``few_shot_accuracy`` for every shot count and seeds 0 .. seeds-1: {shots: accuracies (seeds,)}."""
    train_features, test_features = to_host(train_features), to_host(test_features)  # once, not per draw
    return {n: np.array([few_shot_accuracy(train_features, train_labels, test_features, test_labels, n, seed, l2,
                                           num_classes) for seed in range(seeds)]) for n in shots}


def mean_and_std(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) of accuracies over seeds."""
    accuracies = np.asarray(accuracies, dtype=np.float64)
    return float(accuracies.mean()), (float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0)
