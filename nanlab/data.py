"""Small synthetic datasets, made in code (no downloads), as NumPy arrays both frameworks can use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Train and held-out arrays: ``x`` float32 features, ``y`` int64 class labels or float32 targets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def make_blobs(seed: int, num_classes: int, num_features: int, num_samples: int,
               spread: float = 1.0, eval_fraction: float = 0.25,
               class_frequencies: Sequence[float] | None = None) -> Dataset:
    """Gaussian class clusters with standardised features: an easy, honest classification task.

    ``spread`` scales the distance between class centres relative to the unit noise; smaller is harder.
    ``class_frequencies`` (summing to 1) makes the classes imbalanced; by default they are equally likely.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, size=(num_classes, num_features))
    if class_frequencies is None:
        labels = rng.integers(0, num_classes, size=num_samples)
    else:
        labels = rng.choice(num_classes, size=num_samples, p=class_frequencies)
    features = centres[labels] + rng.normal(0.0, 1.0, size=(num_samples, num_features))
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    num_eval = int(num_samples * eval_fraction)
    x, y = features.astype(np.float32), labels.astype(np.int64)
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])


def minibatch_indices(num_samples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless shuffled minibatch indices, reshuffled every epoch by a seeded generator."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(num_samples)
        for start in range(0, num_samples - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def r_squared(predictions: np.ndarray, targets: np.ndarray) -> float:
    """The coefficient of determination, in the targets' own units: 1 is perfect, 0 predicts the mean, negative is
    worse than the mean (a diverged model's overflowing error gives -inf or nan, not a warning)."""
    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(1.0 - np.sum((targets - predictions) ** 2) / np.sum((targets - targets.mean()) ** 2))
