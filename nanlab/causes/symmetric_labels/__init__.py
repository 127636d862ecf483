"""Symmetric labels: classes encoded as -1, 0, 1 fed to a loss that wants 0..K-1.

Sparse cross-entropy uses the label as an index, so -1 behaves like any out-of-range label (CPU raises, GPU NaN or
device-side assert). Written by hand as ``log_probs[range(n), y]``, -1 silently indexes the *last* class: no error,
no NaN, and predictions for class -1 come back as 2.
"""
from nanlab.evidence import apply_encoding, encode_labels
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 3
NUM_FEATURES = 10
HIDDEN_UNITS = 64
BATCH_SIZE = 32
NUM_SAMPLES = 640
LR = 0.1

CAUSE = Cause(
    id="symmetric-labels",
    number=5,
    title="Labels -1, 0, 1 instead of 0, 1, 2",
    mechanism="sparse cross-entropy indexes the logits with the label; -1 is out of range (or, in a hand-written "
              "gather, wraps to the last class)",
    when="at the first batch containing a -1 label (step 0 in practice, as a third of the labels are -1)",
    symptom="CPU: PyTorch IndexError 'Target -1 is out of bounds', TensorFlow InvalidArgumentError 'Received a "
            "label value of -1'; GPU: NaN (TensorFlow) or device-side assert (PyTorch); hand-written gather: no "
            "error, accuracy stuck near 2/3 because class -1 is predicted as 2",
    fixes=(
        Fix("map-labels", "map the labels to 0..K-1 before training (and back for display)"),
        Fix("wrapping-gather", "a hand-written log_probs[range(n), y] loss: -1 wraps to the last class, the error "
                               "goes away, predictions for -1 come back as 2", hides_problem=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=60,
    score_name="held-out accuracy against the labels as given",
    pass_score=0.8,
    sources=(
        "Stack Overflow 'Deep-Learning Nan loss reasons': labels -1, 0, 1 — use 0, 1, 2 instead",
        "PyTorch docs, torch.nn.functional.cross_entropy: targets are class indices in [0, C)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Three Gaussian classes in 10 standardised features, labelled -1, 0, 1."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=NUM_SAMPLES, spread=1.5)
    return Dataset(data.x_train, data.y_train - 1, data.x_eval, data.y_eval - 1)


def map_labels(data: Dataset) -> tuple[Dataset, list]:
    """Labels re-encoded as 0..K-1; returns the data and ``classes`` (``classes[id]`` is the original label)."""
    y_train, classes = encode_labels(data.y_train)
    return Dataset(data.x_train, y_train, data.x_eval, apply_encoding(data.y_eval, classes)), classes
