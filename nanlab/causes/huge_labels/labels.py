"""Framework-neutral label checks: find class labels a softmax classifier cannot index, before training.

Sparse cross-entropy looks the label up as an index into the logits, so a label outside ``0..num_classes-1``
(a stray 8000, or -1 from a {-1, 0, 1} encoding) makes the CPU raise, the GPU return NaN (TensorFlow) or trip a
device-side assert (PyTorch), or, in a hand-written ``log_probs[range(n), y]``, silently wrap -1 to the last class.
"""
from __future__ import annotations

import numpy as np

from nanlab.errors import NanlabError

MAX_LISTED = 10


def find_bad_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices of the samples whose label is not an integer in ``0..num_classes-1`` (NaN counts as bad)."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise NanlabError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise NanlabError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.dtype.kind not in "biuf":
        raise NanlabError(f"labels must be numeric class ids, got dtype {labels.dtype}")
    with np.errstate(invalid="ignore"):
        good = (labels >= 0) & (labels < num_classes) & (labels == np.floor(labels))
    return np.flatnonzero(~good)


def check_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Return ``y`` as int64 class ids, or raise NanlabError naming the offending sample indices and labels."""
    bad = find_bad_labels(y, num_classes)
    labels = np.asarray(y)
    if bad.size:
        listed = ", ".join(f"{index} (label {labels[index]:g})" for index in bad[:MAX_LISTED])
        more = f" and {bad.size - MAX_LISTED} more" if bad.size > MAX_LISTED else ""
        raise NanlabError(f"{bad.size} of {labels.size} labels are not class ids in 0..{num_classes - 1}: "
                          f"sample {listed}{more}; remap them (encode_labels) or drop those samples")
    return labels.astype(np.int64)


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary label values to contiguous ids ``0..K-1``; returns ``(ids, classes)``, ``classes[ids] == y``."""
    classes, ids = np.unique(np.asarray(y), return_inverse=True)
    return ids.astype(np.int64), classes


def apply_encoding(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Encode new labels (held-out, or at serving time) with the ``classes`` found on the training set."""
    labels = np.asarray(y)
    unknown = np.flatnonzero(~np.isin(labels, classes))
    if unknown.size:
        raise NanlabError(f"labels at samples {unknown[:MAX_LISTED].tolist()} are not among the training classes "
                          f"{classes.tolist()}")
    return np.searchsorted(classes, labels).astype(np.int64)
