"""Division by zero: a loss averaged over the count of each class, in a batch that lacks one class.

A class-balanced cross-entropy divides each class's summed loss by the number of its samples in the batch. When a
rare class is absent the division is ``0 / 0 = NaN`` (and ``x / 0 = ±inf``). The guard that looks right,
``where(count == 0, 0, sum / count)``, is finite in the forward pass, but its gradient still runs through
``sum / count``: the derivative ``1 / count`` is computed as ``0 / 0 = NaN`` and poisons every weight.
"""
from typing import Iterator

import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
CLASS_FREQUENCIES = (0.4, 0.3, 0.2, 0.1)  # class 3 is rare: ~8% of 24-sample batches have none of it
NUM_FEATURES = 20
HIDDEN_UNITS = 64
BATCH_SIZE = 24
LR = 0.01  # Adam
EPS = 1e-8  # the eps-denominator fix: sum / (count + EPS)

CAUSE = Cause(
    id="division-by-zero",
    number=3,
    title="Division by zero: a denominator that can be 0",
    mechanism="a denominator that is 0 in real use (the count of a class absent from the batch, the norm of an "
              "all-zero vector, an empty mask) gives 0/0 = NaN or x/0 = ±inf; a where() guard around the division "
              "still back-propagates 0/0 = NaN",
    when="at the first batch where the denominator is 0 — here the first batch without the rare class, usually "
         "within a few steps; it comes and goes with the batch composition (small batches, rare classes, "
         "all-zero feature rows, empty masks)",
    symptom="loss NaN (or Inf) at an unpredictable early step, straight from normal values with no growth before "
            "it; with a where(b == 0, 0, a / b) guard the loss stays finite while the gradients and then the "
            "weights turn NaN",
    fixes=(
        Fix("eps-denominator", "a small epsilon in the denominator: sum / (count + 1e-8)"),
        Fix("guard-count", "guard the count itself: sum / max(count, 1)"),
        Fix("balanced-batches", "a class-balanced sampler: every batch holds 6 samples of each class, so no count "
            "is 0 (the loss is unchanged)"),
        Fix("safe-divide", "tf.math.divide_no_nan; in PyTorch the double where: "
            "where(b == 0, 0, a / where(b == 0, 1, b))"),
        Fix("where-guard", "where(count == 0, 0, sum / count): finite forward, but the gradient of sum / count is "
            "still 0/0 = NaN", hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "TensorFlow docs, tf.math.divide_no_nan: a safe divide that returns 0 where the denominator is 0",
        "tensorflow/tensorflow#20091: a division by zero in the branch tf.where does not select still gives a NaN "
        "gradient",
        "pytorch/pytorch#10729 and #23395: torch.where passes NaN/Inf gradients from the unselected branch; the "
        "workaround is to make that branch safe before the where (the double where)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features, imbalanced: class 3 is 10% of the samples."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0,
                      class_frequencies=CLASS_FREQUENCIES)


def balanced_batch_indices(labels: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches with ``batch_size // NUM_CLASSES`` samples of every class (a stratified, class-balanced
    sampler): each class is drawn in its own shuffled order, and a class that runs out (the rare one, first) is
    reshuffled on its own. The rare class is oversampled; no batch ever lacks a class."""
    rng = np.random.default_rng(seed)
    per_class = batch_size // NUM_CLASSES
    pools = [np.flatnonzero(labels == label) for label in range(NUM_CLASSES)]
    orders, positions = [rng.permutation(pool) for pool in pools], [0] * NUM_CLASSES
    while True:
        batch = []
        for label, pool in enumerate(pools):
            if positions[label] + per_class > len(orders[label]):
                orders[label], positions[label] = rng.permutation(pool), 0
            batch.append(orders[label][positions[label]:positions[label] + per_class])
            positions[label] += per_class
        yield rng.permutation(np.concatenate(batch))
