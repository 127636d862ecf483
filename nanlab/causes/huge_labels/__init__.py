"""Huge labels: a class label far outside ``0..num_classes-1`` (one stray 8000 in a 5-class problem).

Sparse cross-entropy indexes the logits with the label. On CPU both frameworks check the index and raise; on GPU
TensorFlow returns NaN for that row and PyTorch trips a device-side assert. The regression cousin: targets of
order 1e10 under MSE make the residuals, and so the gradients, so large that SGD overflows float32 in a few steps.
"""
import numpy as np

from nanlab.evidence import apply_encoding, check_labels, encode_labels, find_bad_labels
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 5
NUM_FEATURES = 10
HIDDEN_UNITS = 64
BATCH_SIZE = 32
NUM_SAMPLES = 640  # 480 training samples = 15 batches: the stray label is drawn within the first epoch
LR = 0.1
HUGE_LABEL = 8000

REGRESSION_SCALE = 1e10
REGRESSION_STEPS = 100
REGRESSION_LR = 0.05
ADAM_LR = 1e-3  # Adam's default
ADAM_STEPS = 300

CAUSE = Cause(
    id="huge-labels",
    number=4,
    title="Class labels out of range (a stray 8000)",
    mechanism="sparse cross-entropy uses the label as an index into the logits; an index past the last class has "
              "no logit, so CPUs raise and GPUs return NaN or assert",
    when="at the first batch that contains the bad label, often step 0 or somewhere in epoch 1, while earlier "
         "batches trained normally",
    symptom="CPU: TensorFlow InvalidArgumentError 'Received a label value of 8000 which is outside the valid "
            "range', PyTorch IndexError 'Target 8000 is out of bounds'; GPU: NaN loss (TensorFlow) or CUDA "
            "'device-side assert triggered' (PyTorch); regression with 1e10 targets: loss ~1e20 then Inf/NaN",
    fixes=(
        Fix("drop-bad-labels", "validate the labels before training and drop the offending samples"),
        Fix("remap-labels", "remap the label values to contiguous ids 0..K-1 (the model gets K outputs)"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=60,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "Stack Overflow 'Deep-Learning Nan loss reasons': labels outside the range of the loss (e.g. 8000 with "
        "5 classes), and regression targets that are too large",
        "TensorFlow docs, tf.nn.sparse_softmax_cross_entropy_with_logits: out-of-range labels raise on CPU and "
        "give NaN loss and gradient rows on GPU",
    ),
    asides=(  # the regression cousin's runs (REGRESSION_SETTINGS in the recipes)
        Fix("standardise-targets", "standardise the 1e10 regression targets (and un-standardise predictions)"),
        Fix("adam", "Adam at its default rate on the raw 1e10 targets: finite, but it never learns",
            hides_problem=True),
    ),
    package=__name__,
)


def bad_label_index(seed: int, num_train: int) -> int:
    """Where the stray label lands in the training set (seeded, so each seed puts it elsewhere)."""
    return int(np.random.default_rng(seed + 1000).integers(num_train))


def make_data(seed: int) -> Dataset:
    """Five Gaussian classes in 10 standardised features, with one training label replaced by 8000."""
    clean = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=NUM_SAMPLES, spread=1.5)
    y_train = clean.y_train.copy()
    y_train[bad_label_index(seed, len(y_train))] = HUGE_LABEL
    return Dataset(clean.x_train, y_train, clean.x_eval, clean.y_eval)


def drop_bad_labels(data: Dataset, num_classes: int) -> Dataset:
    """The training set without the samples whose label is not a class id (found by ``find_bad_labels``)."""
    keep = np.setdiff1d(np.arange(len(data.y_train)), find_bad_labels(data.y_train, num_classes))
    y_train = check_labels(data.y_train[keep], num_classes)
    return Dataset(data.x_train[keep], y_train, data.x_eval, check_labels(data.y_eval, num_classes))


def remap_labels(data: Dataset) -> tuple[Dataset, np.ndarray]:
    """Labels re-encoded as 0..K-1 from the training set's values; returns the data and ``classes`` to decode."""
    y_train, classes = encode_labels(data.y_train)
    return Dataset(data.x_train, y_train, data.x_eval, apply_encoding(data.y_eval, classes)), classes


def make_regression_data(seed: int, scale: float = REGRESSION_SCALE) -> Dataset:
    """A smooth nonlinear regression target in 8 standardised features, multiplied by ``scale`` (1e10: broken)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_SAMPLES, 8)).astype(np.float32)
    weights = rng.normal(size=8) / np.sqrt(8)
    y = (x @ weights + 0.5 * np.sin(2 * x[:, 0]) + 0.1 * rng.normal(size=NUM_SAMPLES)) * scale
    y = y.astype(np.float32)[:, None]
    num_eval = NUM_SAMPLES // 4
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])
