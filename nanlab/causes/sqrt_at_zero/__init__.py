"""Square root at zero: standard-deviation pooling of a sequence that does not change.

``std = sqrt(var)`` is finite at ``var = 0`` (it is 0), but its derivative ``1 / (2 sqrt(var))`` is ``inf`` there,
and the chain rule multiplies it by ``d var / d x = 2 (x - mean) / n = 0``: ``inf * 0 = NaN``. The forward pass is
fine; the backward pass poisons every weight below the pooling.
"""
import numpy as np

from nanlab.data import Dataset
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 6
SEQUENCE_LENGTH = 8
HIDDEN_UNITS = 16
BATCH_SIZE = 32
LR = 0.01  # Adam
STUCK_FRACTION = 0.005  # sequences from a stuck sensor: the same reading at every step
EPS = 1e-6  # the eps-under-root fix: sqrt(var + EPS)

CAUSE = Cause(
    id="sqrt-at-zero",
    number=12,
    title="Square root at zero: std pooling of a constant sequence",
    mechanism="sqrt(var) is 0 at var = 0, but its derivative 1 / (2 sqrt(var)) is inf there; times d var / d x = 0 "
              "it gives inf * 0 = NaN, so the forward pass is finite and the backward pass is not",
    when="at the first batch holding a sequence whose pooled features do not vary (a stuck sensor, a padded or "
         "repeated input, a one-step sequence) that reaches a hand-written sqrt(var), sqrt(sum(x**2)) or "
         "tf.math.reduce_std",
    symptom="the loss stays finite, the gradient norm is NaN at an early, batch-dependent step and the weights "
            "are NaN after the update; the backward pass of sqrt is the first to go non-finite",
    fixes=(
        Fix("eps-under-root", "an epsilon under the root: sqrt(var + 1e-6)"),
        Fix("safe-sqrt", "the double where: where(var > 0, sqrt(where(var > 0, var, 1)), 0), the exact std with a "
            "zero gradient at var = 0"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "Habr, 'NaN in neural network training' (Russian): the derivative of a standard-deviation pooling layer "
        "divides by the standard deviation, which is 0 when all elements are equal; add a small number under it",
        "PyTorch docs, torch.std; TensorFlow docs, tf.math.reduce_std (measured here: torch.std's gradient at a "
        "constant input is 0, tf.math.reduce_std's is NaN)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Sequences whose class sets how much each of the 6 features fluctuates over 8 steps (std pooling sees it);
    0.5% of the sequences (train and held-out) come from a stuck sensor and repeat their first reading."""
    rng = np.random.default_rng(seed)
    amplitudes = rng.uniform(0.2, 2.0, size=(NUM_CLASSES, NUM_FEATURES))
    num_samples = 1024
    labels = rng.integers(0, NUM_CLASSES, size=num_samples)
    x = rng.normal(0.0, 1.0, size=(num_samples, SEQUENCE_LENGTH, NUM_FEATURES)) * amplitudes[labels][:, None, :]
    stuck = rng.random(num_samples) < STUCK_FRACTION
    x[stuck] = x[stuck, :1]  # the first reading at every step
    x, y = x.astype(np.float32), labels.astype(np.int64)
    num_eval = num_samples // 4
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])
