"""Zero norm: ``x / ||x||`` (here ``x * rsqrt(sum(x**2))``, as L2 and RMS normalisations compute it) of an
all-zero row.

A feature row that is all zeros (a missing record filled with zeros, an empty document, a padding token) maps
through a bias-free layer to an all-zero embedding; its norm is 0, ``rsqrt(0) = inf`` and ``0 * inf = NaN``.
The framework's normalisations keep the denominator away from 0 with an epsilon.
"""
import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
EMBEDDING_UNITS = 32
BATCH_SIZE = 32
LR = 0.01  # Adam
ZERO_ROW_FRACTION = 0.03  # rows whose features are all missing, stored as zeros: most 32-sample batches hold one
EPS = 1e-7  # the eps-denominator fix: x / (||x|| + EPS), the value the Habr article suggests ("10e-7")

CAUSE = Cause(
    id="zero-norm",
    number=11,
    title="Zero norm: normalising an all-zero vector",
    mechanism="x / ||x|| of an all-zero row: the norm is 0, rsqrt(0) = inf (or 1 / 0 = inf) and 0 * inf = NaN; the "
              "framework's normalisations (F.normalize, tf.math.l2_normalize) keep an epsilon in the denominator",
    when="at the first batch holding an all-zero row (missing features filled with 0, an empty document, a padding "
         "token, a dead ReLU layer) that reaches a hand-written L2 or RMS normalisation",
    symptom="loss NaN at an early, batch-dependent step, straight from normal values; the forward pass has an inf "
            "in rsqrt (or 0/0 in a division) and only the samples with all-zero rows carry it",
    fixes=(
        Fix("eps-denominator", "an epsilon in the denominator: x / (||x|| + 1e-7), with the framework's norm"),
        Fix("framework-normalize", "the framework's normalisation: F.normalize / tf.math.l2_normalize (an "
            "epsilon inside)"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "Habr, 'NaN in neural network training' (Russian): a normalisation layer divides by the norm of x; when x "
        "is zero so is its norm; add a small number (e.g. 10e-7) to the denominator; popular frameworks' "
        "normalisation layers usually already do",
        "PyTorch docs, torch.nn.functional.normalize: v / max(||v||_p, eps), eps = 1e-12",
        "TensorFlow docs, tf.math.l2_normalize: x / sqrt(max(sum(x**2), epsilon)), epsilon = 1e-12",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 features; 3% of the rows (train and held-out) are all zeros: missing records."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
    rng = np.random.default_rng(seed + 1)
    for x in (data.x_train, data.x_eval):
        x[rng.random(len(x)) < ZERO_ROW_FRACTION] = 0.0
    return data
